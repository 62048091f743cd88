"""``xserve predict``: offline batch predictions (and explanations) for a file."""

from __future__ import annotations

from pathlib import Path

import click

from xserve.cli.options import data_option, models_dir_option

__all__ = ["predict"]


@click.command()
@click.argument("model")
@data_option("CSV or Parquet.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV or Parquet (by extension); default stdout (CSV).",
)
@click.option("--version", "version", help="Model version; default the serving one.")
@click.option("--batch-size", default=1024, show_default=True, type=click.IntRange(min=1))
@click.option("--explain", is_flag=True, help="Add the exact inline attributions and reason codes.")
@models_dir_option
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
