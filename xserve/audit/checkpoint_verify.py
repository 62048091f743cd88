"""Checking checkpoints against the log: is each one signed, and does the chain still hold
the (sequence number, hash) it signed?

Together with an intact chain (``xserve.audit.verify``), a checkpoint that holds proves
every record up to its sequence number is as it was when it was signed: each record's
hash covers the one before it. A rewrite of the whole chain, head included, passes the
chain check but changes the hash at every checkpointed position after the first altered
record, so it fails here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from xserve.audit.base import AuditSink, Query
from xserve.audit.checkpoint import Checkpoint, signature_fault
from xserve.audit.record import GENESIS

__all__ = ["CheckpointFault", "CheckpointReport", "check_checkpoints"]


@dataclass(frozen=True)
class CheckpointFault:
    where: str
    """Which checkpoint: ``file:line``, or ``stored`` for one kept in the log."""
    seq: int
    reason: str

    def __str__(self) -> str:
        return f"checkpoint {self.where} (record {self.seq}): {self.reason}"


@dataclass
class CheckpointReport:
    checked: int = 0
    faults: list[CheckpointFault] = field(default_factory=list)
    latest: int | None = None
    """The highest sequence number a checkpoint that holds vouches for."""

    @property
    def ok(self) -> bool:
        return not self.faults


def _chain_fault(sink: AuditSink, checkpoint: Checkpoint) -> str | None:
    """Why the chain no longer holds ``checkpoint``'s (seq, hash), or None if it does."""
    if checkpoint.seq == 0:
        return None if checkpoint.hash == GENESIS else "record 0 is the empty chain (forged)"
    found = sink.query(Query(after=checkpoint.seq - 1, limit=1))
    if not found or found[0].seq != checkpoint.seq:
        return f"the log no longer holds record {checkpoint.seq} (deleted or truncated)"
    if found[0].hash != checkpoint.hash:
        return (
            f"the log's record {checkpoint.seq} has hash {found[0].hash}, the checkpoint "
            f"signed {checkpoint.hash}: the chain was rewritten at or before it"
        )
    return None


def check_checkpoints(
    sink: AuditSink,
    checkpoints: Iterable[tuple[str, Checkpoint]],
    keys: Mapping[str, Ed25519PublicKey],
    report: CheckpointReport | None = None,
) -> CheckpointReport:
    """Check each ``(where, checkpoint)``: its signature under one of ``keys`` (by key
    id), then the chain in ``sink`` at its sequence number."""
    report = report or CheckpointReport()
    for where, checkpoint in checkpoints:
        report.checked += 1
        fault = signature_fault(checkpoint, keys) or _chain_fault(sink, checkpoint)
        if fault is not None:
            report.faults.append(CheckpointFault(where, checkpoint.seq, fault))
        elif report.latest is None or checkpoint.seq > report.latest:
            report.latest = checkpoint.seq
    return report
