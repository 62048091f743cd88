"""Options that several commands share."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["models_dir_option"]

models_dir_option = click.option(
    "--models-dir", type=click.Path(path_type=Path), help="Overrides XSERVE_MODELS_DIR."
)
