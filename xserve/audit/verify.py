"""Checking the hash chain: the first record that was edited, removed, inserted or moved.

Each record is checked against its own hash, its link to the record before
it, its sequence number and the chain head. When a link is broken, the
records on either side tell what happened: a record linking to the one two
places back means the one between was inserted; a record holding another
position's content means records were moved; otherwise the earlier record
was altered (and re-hashed) or replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xserve.audit.base import AuditSink, Head, Snapshot
from xserve.audit.reading import read_body
from xserve.audit.record import GENESIS, Record, chain_hash

__all__ = ["Verdict", "verify", "verify_sink"]

_COLUMNS = ("time", "request_id", "caller", "model", "version")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    """Records read (up to the first bad one)."""
    head: Head
    first_bad: int | None = None
    """Sequence number of the first bad record."""
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "head": {"seq": self.head.seq, "hash": self.head.hash},
            "first_bad": None
            if self.first_bad is None
            else {"seq": self.first_bad, "reason": self.reason},
        }


def _check(record: Record, prev: Record | None, before_prev: str) -> tuple[int, str] | None:
    """The first fault at ``record`` given the record before it, as (seq, reason)."""
    if chain_hash(record.prev_hash, record.body) != record.hash:
        return record.seq, "content does not match its hash (edited)"
    body = read_body(record.body)
    if body is None:
        return record.seq, "content is not a JSON object (edited)"
    expected_prev = prev.hash if prev is not None else GENESIS
    if record.prev_hash != expected_prev:
        if prev is not None and record.prev_hash == before_prev:
            return prev.seq, f"inserted: record {record.seq} links to record {prev.seq - 1}"
        if body.get("seq") != record.seq:
            return record.seq, f"out of place: holds record {body.get('seq')} (moved or reordered)"
        if prev is None:
            return record.seq, "does not link to the start of the chain (edited)"
        return prev.seq, (
            f"altered or replaced: record {record.seq} links to a different hash for it"
        )
    if body.get("seq") != record.seq:
        return record.seq, f"out of place: holds record {body.get('seq')} (moved or reordered)"
    for column in _COLUMNS:
        if getattr(record, column) != body.get(column):
            return record.seq, f"column {column!r} differs from the hashed content (edited)"
    return None


def verify(snapshot: Snapshot) -> Verdict:
    """Walk the chain in ``snapshot``; stop at the first bad record."""
    head = snapshot.head
    prev: Record | None = None
    before_prev = GENESIS
    count = 0
    for record in snapshot.records:
        count += 1
        expected = prev.seq + 1 if prev is not None else 1
        if record.seq != expected:
            last = record.seq - 1
            missing = f"{expected}" if last == expected else f"{expected}-{last}"
            return Verdict(False, count, head, expected, f"missing: record {missing} (deleted)")
        fault = _check(record, prev, before_prev)
        if fault is not None:
            return Verdict(False, count, head, fault[0], fault[1])
        before_prev = prev.hash if prev is not None else GENESIS
        prev = record
    last_seq, last_hash = (prev.seq, prev.hash) if prev is not None else (0, GENESIS)
    if head.seq > last_seq:
        return Verdict(
            False,
            count,
            head,
            last_seq + 1,
            f"missing: the chain head is record {head.seq}, the last stored is "
            f"{last_seq} (deleted)",
        )
    if head.seq < last_seq:
        return Verdict(
            False, count, head, head.seq + 1, f"beyond the chain head {head.seq} (inserted)"
        )
    if head.hash != last_hash:
        return Verdict(
            False,
            count,
            head,
            last_seq,
            "does not match the chain head's hash (altered and re-hashed)",
        )
    return Verdict(True, count, head)


def verify_sink(sink: AuditSink) -> Verdict:
    with sink.snapshot() as snapshot:
        return verify(snapshot)
