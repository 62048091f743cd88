"""``xserve precompute``: fill the explanation cache for every row of a file."""

from __future__ import annotations

from pathlib import Path

import click

from xserve.cli.options import data_option, models_dir_option

__all__ = ["precompute"]


@click.command()
@click.argument("model")
@data_option("CSV or Parquet with the feature columns.")
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
@models_dir_option
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
