"""The ``xserve`` command: serve, deploy, predict."""

from __future__ import annotations

import os
from pathlib import Path

import click

from xserve.cli.admin import audit, keys
from xserve.cli.report import report
from xserve.cli.sync import sync

__all__ = ["main"]


@click.group()
@click.version_option(package_name="xserve")
def main() -> None:
    """xserve: explainable model serving."""


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--workers", default=1, show_default=True, type=int, help="Server processes sharing the port."
)
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

    from xserve.monitoring.procdir import metrics_dir

    # Before prometheus-client loads anywhere: /metrics adds up every worker's figures.
    with metrics_dir():
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
    from xserve.errors import XServeError
    from xserve.repository.deploy import deploy_artifact
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
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV or Parquet.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV or Parquet (by extension); default stdout (CSV).",
)
@click.option("--version", "version", help="Model version; default the serving one.")
@click.option("--batch-size", default=1024, show_default=True, type=click.IntRange(min=1))
@click.option("--explain", is_flag=True, help="Add the exact inline attributions and reason codes.")
@click.option("--models-dir", type=click.Path(path_type=Path), help="Overrides XSERVE_MODELS_DIR.")
def predict(
    model: str,
    data: Path,
    out: Path | None,
    version: str | None,
    batch_size: int,
    explain: bool,
    models_dir: Path | None,
) -> None:
    """Batch predictions (and explanations) for every row of DATA."""
    from xserve.errors import XServeError
    from xserve.serving.offline import predict_file
    from xserve.settings import Settings

    root = models_dir or Settings().models_dir
    try:
        predict_file(root, model, version, data, out, batch_size, explain)
    except XServeError as exc:
        raise click.ClickException(exc.message) from None


@main.command()
@click.option("--concurrency", type=click.IntRange(min=1), help="Job processes; default: cores.")
@click.option("--loglevel", default="info", show_default=True)
@click.option("--models-dir", type=click.Path(path_type=Path), help="Overrides XSERVE_MODELS_DIR.")
def worker(concurrency: int | None, loglevel: str, models_dir: Path | None) -> None:
    """Run a Celery worker for explanation jobs (needs XSERVE_BROKER_URL)."""
    from xserve.settings import Settings
    from xserve.threads import pin_env

    if models_dir is not None:
        os.environ["XSERVE_MODELS_DIR"] = str(models_dir)
    settings = Settings()
    if not settings.broker_url:
        raise click.ClickException(
            "xserve worker needs XSERVE_BROKER_URL, e.g. XSERVE_BROKER_URL=redis://localhost:6379/0"
        )
    # Before numpy & co. load (the job processes fork from this one): processes, not
    # threads, share the cores.
    pin_env(settings.job_threads)
    from xserve.jobs.celery_app import make_celery
    from xserve.jobs.run import preload

    preload()  # once here rather than in every job process

    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--queues={settings.job_queue}",
        "--pool=prefork",
        f"--hostname=xserve-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    make_celery(settings).worker_main(argv)


@main.command()
@click.argument("model")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV or Parquet with the feature columns.",
)
@click.option("--method", required=True, help="kernel_shap, lime or anchors.")
@click.option(
    "--params",
    "params_json",
    default="{}",
    show_default=True,
    help="The method's parameters as JSON, e.g. '{\"nsamples\": 500}'.",
)
@click.option("--version", "version", help="Model version; default the serving one.")
@click.option(
    "--chunk", default=16, show_default=True, type=click.IntRange(min=1), help="Rows per job."
)
@click.option("--models-dir", type=click.Path(path_type=Path), help="Overrides XSERVE_MODELS_DIR.")
def precompute(
    model: str,
    data: Path,
    method: str,
    params_json: str,
    version: str | None,
    chunk: int,
    models_dir: Path | None,
) -> None:
    """Fill the explanation cache for every row of DATA; rows already cached are skipped."""
    import json

    from xserve.errors import XServeError
    from xserve.jobs.precompute import precompute as run
    from xserve.settings import Settings

    try:
        params = json.loads(params_json)
    except ValueError as exc:
        raise click.ClickException(f"--params: not valid JSON: {exc}") from None
    settings = Settings()
    if models_dir is not None:
        settings = settings.model_copy(update={"models_dir": models_dir})
    try:
        summary = run(settings, model, data, method, params, version, chunk)
    except XServeError as exc:
        raise click.ClickException(exc.message) from None
    except KeyboardInterrupt:
        raise click.ClickException("stopped: rerun to go on (finished rows are cached)") from None
    click.echo(
        f"{summary.rows} rows: {summary.skipped} already cached, {summary.computed} computed, "
        f"{summary.failed} failed",
        err=True,
    )
    if summary.failed:
        raise click.ClickException(f"{summary.failed} rows failed: {summary.errors[0]}")


main.add_command(audit)
main.add_command(keys)
main.add_command(sync)
main.add_command(report)
