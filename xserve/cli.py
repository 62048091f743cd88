"""The ``xserve`` command: serve, deploy, predict."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

__all__ = ["main"]


@click.group()
@click.version_option(package_name="xserve")
def main() -> None:
    """xserve: explainable model serving."""


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="Server processes sharing the port.")
@click.option("--models-dir", type=click.Path(path_type=Path), help="Overrides XSERVE_MODELS_DIR.")
@click.option("--log-level", default="info", show_default=True)
def serve(host: str, port: int, workers: int, models_dir: Path | None, log_level: str) -> None:
    """Serve the model repository over HTTP."""
    from xserve.settings import Settings
    from xserve.threads import pin_env, threads_per_worker

    if models_dir is not None:
        os.environ["XSERVE_MODELS_DIR"] = str(models_dir)
    # Before numpy/xgboost load: each worker gets its share of the cores.
    pin_env(threads_per_worker(Settings(), workers))
    import uvicorn

    uvicorn.run(
        "xserve.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
    )


@main.command()
@click.argument("artifact", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="Model name (folder under the repository).")
@click.option("--background", type=click.Path(exists=True, path_type=Path))
@click.option("--flavor", help="Runtime flavor; inferred from the artifact when omitted.")
@click.option("--classes", help="Comma-separated class labels, in the model's output order.")
@click.option("--trusted", is_flag=True, help="Allow pickle-based artifacts.")
@click.option("--models-dir", type=click.Path(path_type=Path), help="Overrides XSERVE_MODELS_DIR.")
def deploy(
    artifact: Path,
    name: str,
    background: Path | None,
    flavor: str | None,
    classes: str | None,
    trusted: bool,
    models_dir: Path | None,
) -> None:
    """Add ARTIFACT as the next version of model NAME, with its manifest."""
    from xserve.deploy import deploy_artifact
    from xserve.errors import XServeError
    from xserve.settings import Settings

    root = models_dir or Settings().models_dir
    labels = [c.strip() for c in classes.split(",")] if classes else None
    try:
        folder = deploy_artifact(root, name, artifact, background, flavor, labels, trusted)
    except XServeError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"deployed {name} version {folder.name} at {folder}")


@main.command()
@click.argument("model")
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path), help="CSV or Parquet.")
@click.option("--out", type=click.Path(path_type=Path), help="CSV or Parquet; default stdout (CSV).")
@click.option("--version", "version", help="Model version; default the serving one.")
@click.option("--batch-size", default=1024, show_default=True, type=int)
@click.option("--models-dir", type=click.Path(path_type=Path), help="Overrides XSERVE_MODELS_DIR.")
def predict(
    model: str, data: Path, out: Path | None, version: str | None, batch_size: int, models_dir: Path | None
) -> None:
    """Batch predictions for every row of DATA."""
    from xserve.batch import predict_file
    from xserve.errors import XServeError
    from xserve.settings import Settings

    root = models_dir or Settings().models_dir
    try:
        predict_file(root, model, version, data, out, batch_size)
    except XServeError as exc:
        raise click.ClickException(exc.message) from None


if __name__ == "__main__":
    sys.exit(main())
