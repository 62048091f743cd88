"""Options that several commands share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["data_option", "models_dir_option"]

models_dir_option = click.option(
    "--models-dir", type=click.Path(path_type=Path), help="Overrides XSERVE_MODELS_DIR."
)


def data_option(help: str) -> Callable[[F], F]:
    """``--data FILE``: an existing CSV or Parquet file."""
    return click.option(
        "--data",
        required=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help=help,
    )
