"""``xserve audit verify|export``: the audit log's hash chain, and its records as JSONL."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # the commands import their modules lazily: a fast `xserve --help`
    from xserve.audit import AuditSink

__all__ = ["audit"]

URL_HELP = "Audit store URL; overrides XSERVE_AUDIT_URL."


def _sink(url: str | None) -> AuditSink:
    from xserve.audit import sink_from_url
    from xserve.settings import Settings

    try:
        sink = sink_from_url(url or Settings().audit_url)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if sink is None:
        raise click.ClickException("auditing is turned off (XSERVE_AUDIT_URL=none)")
    from xserve.audit.sqlite import SQLiteSink

    if isinstance(sink, SQLiteSink) and not sink.path.exists():
        # Opening would create an empty log, and an empty log verifies: say it is absent.
        raise click.ClickException(f"no audit log at {sink.path}")
    return sink


@click.group()
def audit() -> None:
    """The audit log: verify its hash chain, export it."""


@audit.command()
@click.option("--url", help=URL_HELP)
def verify(url: str | None) -> None:
    """Check every record's hash and link; exit 1 naming the first bad record."""
    from xserve.audit import verify_sink
    from xserve.errors import AuditUnavailable

    sink = _sink(url)
    try:
        with sink:
            verdict = verify_sink(sink)
    except AuditUnavailable as exc:
        raise click.ClickException(exc.message) from None
    head = f"head: record {verdict.head.seq}, hash {verdict.head.hash}"
    if verdict.ok:
        click.echo(f"ok: {verdict.records} records, chain intact; {head}")
        return
    click.echo(f"TAMPERED: record {verdict.first_bad}: {verdict.reason}", err=True)
    click.echo(head, err=True)
    sys.exit(1)


@audit.command()
@click.option("--url", help=URL_HELP)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="JSONL file; default stdout."
)
def export(url: str | None, out: Path | None) -> None:
    """Every record as one JSON object a line, in sequence order, with its hashes."""
    from xserve.errors import AuditUnavailable

    sink = _sink(url)
    count = 0
    try:
        with sink, sink.snapshot() as snap:
            stream = out.open("w", encoding="utf-8") if out else sys.stdout
            try:
                for record in snap.records:
                    stream.write(
                        json.dumps(record.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"
                    )
                    count += 1
            finally:
                if out:
                    stream.close()
    except AuditUnavailable as exc:
        raise click.ClickException(exc.message) from None
    if out:
        click.echo(f"exported {count} records to {out}", err=True)
