"""``xserve audit verify|export|checkpoint``: the audit log's hash chain and signed
checkpoints, its records as JSONL, and a checkpoint on demand."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # the commands import their modules lazily: a fast `xserve --help`
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from xserve.audit import AuditSink, Verdict
    from xserve.audit.checkpoint import Checkpoint
    from xserve.audit.checkpoint_verify import CheckpointReport

__all__ = ["audit"]

URL_HELP = "Audit store URL; overrides XSERVE_AUDIT_URL."

NOT_AN_AUDIT_LOG = 2
"""The exit status when the store holds no audit log (1 is a broken chain)."""

SHOWN_FAULTS = 20
"""Failed checkpoints listed one by one; past that, counted."""


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
    """The audit log: verify its hash chain and checkpoints, export it, sign its head."""


def _public_keys(paths: Sequence[Path]) -> dict[str, Ed25519PublicKey]:
    from xserve.security.signing import SigningKeyError, key_id, load_public_key

    keys = {}
    for path in paths:
        try:
            public = load_public_key(path)
        except SigningKeyError as exc:
            raise click.ClickException(str(exc)) from None
        keys[key_id(public)] = public
    return keys


def _checkpoint_files(paths: Sequence[Path]) -> list[tuple[str, Checkpoint]]:
    from xserve.audit.checkpoint import CheckpointError, read_checkpoints

    try:
        return [found for path in paths for found in read_checkpoints(path)]
    except CheckpointError as exc:
        click.echo(f"CHECKPOINT FAILED: {exc}", err=True)
        sys.exit(1)


def _report_chain(verdict: Verdict) -> None:
    head = f"head: record {verdict.head.seq}, hash {verdict.head.hash}"
    if verdict.ok:
        click.echo(f"ok: {verdict.records} records, chain intact; {head}")
    else:
        click.echo(f"TAMPERED: record {verdict.first_bad}: {verdict.reason}", err=True)
        click.echo(head, err=True)


def _report_checkpoints(report: CheckpointReport, head: int) -> None:
    for fault in report.faults[:SHOWN_FAULTS]:
        click.echo(f"CHECKPOINT FAILED: {fault}", err=True)
    if len(report.faults) > SHOWN_FAULTS:
        click.echo(f"... and {len(report.faults) - SHOWN_FAULTS} more failed", err=True)
    if report.faults:
        click.echo(f"checkpoints: {len(report.faults)} of {report.checked} fail", err=True)
        return
    if report.latest is None:
        click.echo("checkpoints: none given or stored; no record is covered by one")
        return
    after = (
        f"; records {report.latest + 1}-{head} are covered by none" if head > report.latest else ""
    )
    click.echo(
        f"checkpoints: {report.checked} hold; records 1-{report.latest} are as signed{after}"
    )


@audit.command()
@click.option("--url", help=URL_HELP)
@click.option(
    "--checkpoint",
    "checkpoint_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A checkpoint file (JSON lines) kept off the host; repeatable. Needs --public-key.",
)
@click.option(
    "--public-key",
    "public_key_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The Ed25519 public key checkpoints must verify under; repeatable (old keys).",
)
@click.argument("more_checkpoints", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
def verify(
    url: str | None,
    checkpoint_files: tuple[Path, ...],
    public_key_files: tuple[Path, ...],
    more_checkpoints: tuple[Path, ...],
) -> None:
    """Check every record's hash and link; with --public-key, also every checkpoint given
    and every one stored in the log: its signature, and that the chain still holds the
    (sequence, hash) it signed. Checkpoint files may also follow the options
    (``--checkpoint a.jsonl b.jsonl``). Exit 1 naming the first bad record or each failed
    checkpoint, 2 if the store is not an audit log. Opens the store read-only."""
    from xserve.audit import verify_sink
    from xserve.audit.checkpoint_verify import check_checkpoints
    from xserve.errors import AuditUnavailable

    checkpoint_files += more_checkpoints
    if checkpoint_files and not public_key_files:
        raise click.UsageError("--checkpoint needs --public-key: a checkpoint is its signature")
    keys = _public_keys(public_key_files)
    given = _checkpoint_files(checkpoint_files)
    report: CheckpointReport | None = None
    stored_latest = None
    try:
        with _read_only(url) as sink:
            verdict = verify_sink(sink)
            if keys:
                report = check_checkpoints(sink, given, keys)
                stored = (("stored", c) for c in sink.all_checkpoints())
                check_checkpoints(sink, stored, keys, report)
            else:
                stored_latest = sink.latest_checkpoint()
    except AuditUnavailable as exc:
        raise click.ClickException(exc.message) from None
    _report_chain(verdict)
    if report is not None:
        _report_checkpoints(report, verdict.head.seq)
    elif stored_latest is not None:
        click.echo(
            f"note: the log holds signed checkpoints (the latest of record "
            f"{stored_latest.seq}), not checked: pass --public-key"
        )
    if not verdict.ok or (report is not None and not report.ok):
        sys.exit(1)


@audit.command()
@click.option("--url", help=URL_HELP)
@click.option(
    "--key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ed25519 private key; default XSERVE_AUDIT_SIGNING_KEY.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append the checkpoint to this file too (created 0600).",
)
def checkpoint(url: str | None, key: Path | None, out: Path | None) -> None:
    """Sign the chain head now: print the checkpoint (one JSON line), store it in the log
    and append it to XSERVE_AUDIT_CHECKPOINT_DIR when set (and to --out). Exit 2 if the
    store is not an audit log."""
    from xserve.audit.checkpoint import Every, Signer
    from xserve.audit.checkpointer import Checkpointer
    from xserve.errors import AuditUnavailable
    from xserve.security.files import append_line
    from xserve.security.signing import SigningKeyError, load_private_key
    from xserve.settings import Settings

    settings = Settings()
    key = key or settings.audit_signing_key
    if key is None:
        raise click.UsageError("no signing key: pass --key or set XSERVE_AUDIT_SIGNING_KEY")
    try:
        signer = Signer(load_private_key(key))
    except SigningKeyError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        with _read_only(url):  # an audit log it must be: none is created here
            pass
        sink = _sink(url)
        sink.open()
        try:
            signed, stored = Checkpointer(
                sink, signer, Every(), settings.audit_checkpoint_dir
            ).checkpoint_now()
        finally:
            sink.close()
        if out is not None:
            append_line(out, signed.to_json())
    except AuditUnavailable as exc:
        raise click.ClickException(exc.message) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or out}: {exc.strerror or exc}") from None
    click.echo(signed.to_json())
    if not stored:
        click.echo(f"the log held a checkpoint of record {signed.seq} already", err=True)


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
