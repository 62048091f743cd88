"""``xserve outcomes import``: outcomes of earlier decisions from a CSV or Parquet file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from xserve.cli.options import models_dir_option

__all__ = ["outcomes"]

CHUNK = 1000
"""Rows resolved and committed together."""
SHOWN_REFUSALS = 20


@click.group()
def outcomes() -> None:
    """Outcomes of decisions: what happened after them."""


@outcomes.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--request-id", "request_col", required=True, help="Column of request ids.")
@click.option("--outcome", "outcome_col", required=True, help="Column of outcomes.")
@click.option("--instance", "instance_col", help="Column of instance indices (default 0).")
@click.option("--segment", "segment_cols", multiple=True, help="A segment column (repeatable).")
@models_dir_option
def import_(
    file: Path,
    request_col: str,
    outcome_col: str,
    instance_col: str | None,
    segment_cols: tuple[str, ...],
    models_dir: Path | None,
) -> None:
    """Record the outcomes in FILE (CSV or Parquet) in the audit log
    (XSERVE_AUDIT_URL), as POST /v1/outcomes does. Outcomes already in force are skipped,
    so importing a file twice changes nothing. Exits 1 when rows were refused."""
    import msgspec
    from tqdm import tqdm

    from xserve.audit import audit_log_from_settings
    from xserve.outcomes.service import OutcomeItem, OutcomeService
    from xserve.repository.repository import ModelRepository
    from xserve.repository.version import read_table
    from xserve.settings import Settings

    settings = Settings() if models_dir is None else Settings(models_dir=models_dir)
    table = read_table(file)
    columns = [request_col, outcome_col, *segment_cols] + ([instance_col] if instance_col else [])
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise click.UsageError(f"{file}: no column {', '.join(map(repr, missing))}")
    log = audit_log_from_settings(settings)
    if log is None:
        raise click.ClickException("the audit log is off (XSERVE_AUDIT_URL=none)")
    repository = ModelRepository(settings.models_dir)
    repository.scan()
    service = OutcomeService(log, repository, max_items=CHUNK)
    rows = table.to_dict("records")
    accepted = unchanged = 0
    refused: list[str] = []
    log.open()
    try:
        with tqdm(total=len(rows), unit="row", desc="importing outcomes") as bar:
            for start in range(0, len(rows), CHUNK):
                items, where = [], []
                for n, row in enumerate(rows[start : start + CHUNK], start=start + 1):
                    fields = _fields(row, request_col, outcome_col, instance_col, segment_cols)
                    try:
                        items.append(msgspec.convert(fields, OutcomeItem))
                        where.append(n)
                    except msgspec.ValidationError as exc:
                        refused.append(f"row {n}: {exc}")
                result = service.record(items, caller=None)
                accepted += result.accepted
                unchanged += result.unchanged
                refused += [f"row {where[x.index]}: {x.reason}" for x in result.refused]
                bar.update(min(CHUNK, len(rows) - start))
    finally:
        log.close()
    click.echo(f"{accepted} recorded, {unchanged} already in force, {len(refused)} refused")
    for line in refused[:SHOWN_REFUSALS]:
        click.echo(line, err=True)
    if len(refused) > SHOWN_REFUSALS:
        click.echo(f"... and {len(refused) - SHOWN_REFUSALS} more", err=True)
    if refused:
        raise SystemExit(1)


def _plain(value: Any) -> Any:
    """A table cell as JSON would carry it: numpy scalars as Python ones, numbers written
    as text as numbers, whole numbers as integers, NaN as None."""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, str):  # a CSV column with one text cell reads every cell as text
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # a CSV column with a gap reads 1 as 1.0
    return None if isinstance(value, float) and math.isnan(value) else value


def _fields(
    row: dict[Any, Any],
    request_col: str,
    outcome_col: str,
    instance_col: str | None,
    segment_cols: tuple[str, ...],
) -> dict[str, Any]:
    """One row as a POST /v1/outcomes item."""
    segments = {c: _plain(row[c]) for c in segment_cols if _plain(row[c]) is not None}
    return {
        "request_id": str(row[request_col]),
        "outcome": _plain(row[outcome_col]),
        "instance": _plain(row[instance_col]) if instance_col else 0,
        "segments": segments or None,
    }
