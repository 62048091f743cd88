"""``xserve audit verify|export``: the audit log's hash chain, and its records as JSONL."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # the commands import their modules lazily: a fast `xserve --help`
    from xserve.audit import AuditSink

__all__ = ["audit"]

URL_HELP = "Audit store URL; overrides XSERVE_AUDIT_URL."

NOT_AN_AUDIT_LOG = 2
"""The exit status when the store holds no audit log (1 is a broken chain)."""


def _sink(url: str | None) -> AuditSink:
    from xserve.audit import sink_from_url
    from xserve.settings import Settings

    try:
        sink = sink_from_url(url or Settings().audit_url)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if sink is None:
        raise click.ClickException("auditing is turned off (XSERVE_AUDIT_URL=none)")
    return sink


@contextlib.contextmanager
def _read_only(url: str | None) -> Iterator[AuditSink]:
    """The store opened read-only: nothing is created or changed, not even a missing file
    or the tables; a store without them exits 2, "not an audit log"."""
    from xserve.audit.base import NotAnAuditLog
    from xserve.errors import AuditUnavailable

    sink = _sink(url)
    try:
        sink.open(read_only=True)
    except NotAnAuditLog as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(NOT_AN_AUDIT_LOG)
    except AuditUnavailable as exc:
        raise click.ClickException(exc.message) from None
    try:
        yield sink
    finally:
        sink.close()


@click.group()
def audit() -> None:
    """The audit log: verify its hash chain, export it."""


@audit.command()
@click.option("--url", help=URL_HELP)
def verify(url: str | None) -> None:
    """Check every record's hash and link; exit 1 naming the first bad record, 2 if the
    store is not an audit log. Opens the store read-only."""
    from xserve.audit import verify_sink
    from xserve.errors import AuditUnavailable

    try:
        with _read_only(url) as sink:
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
    """Every record as one JSON object a line, in sequence order, with its hashes (the
    store opened read-only; exit 2 if it is not an audit log)."""
    from xserve.errors import AuditUnavailable

    count = 0
    try:
        with _read_only(url) as sink, sink.snapshot() as snap:
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
