"""The audit sink: where records are chained and stored, behind one small interface.

Implementations provide an exclusive, durable transaction and a few row
operations; numbering and chaining happen here, once for all of them, inside
that transaction, so that any number of processes (or hosts) appending to one
store produce one chain.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xserve.audit.record import GENESIS, Record, seal

if TYPE_CHECKING:  # checkpoint imports Head from here
    from xserve.audit.checkpoint import Checkpoint

__all__ = ["AuditSink", "Head", "NotAnAuditLog", "Query", "Snapshot", "chain"]

MAX_PAGE = 1000


class NotAnAuditLog(Exception):
    """A store opened read-only holds no audit tables (or does not exist): not an audit log."""


@dataclass(frozen=True)
class Head:
    """The chain head: the last record's sequence number and hash (0 and GENESIS if empty)."""

    seq: int = 0
    hash: str = GENESIS

    def after(self, records: Sequence[Record]) -> Head:
        """The head once ``records`` (chained after this one) are stored."""
        return Head(records[-1].seq, records[-1].hash) if records else self


@dataclass(frozen=True)
class Query:
    """Filters for reading records; pages by sequence number (``after``)."""

    since: str | None = None
    """Records at or after this time (ISO 8601 UTC, as in the records)."""
    until: str | None = None
    """Records strictly before this time."""
    model: str | None = None
    version: str | None = None
    request_id: str | None = None
    after: int = 0
    """Only records with a sequence number above this (the previous page's last)."""
    limit: int = 100


@dataclass(frozen=True)
class Snapshot:
    """A consistent view of the whole store: its head and every record in sequence order."""

    head: Head
    records: Iterator[Record]


def chain(bodies: Sequence[Mapping[str, Any]], head: Head) -> list[Record]:
    """Number and chain ``bodies`` after ``head``: the records that move it on."""
    seq, prev = head.seq, head.hash
    records = []
    for body in bodies:
        seq += 1
        record = seal(body, seq, prev)
        records.append(record)
        prev = record.hash
    return records


class AuditSink(ABC):
    """Durable, chained storage of audit records. Methods block: call them off the event loop."""

    def __init__(self) -> None:
        self.transactions = 0
        """Append transactions committed by this object (group commit shows as fewer)."""

    @abstractmethod
    def open(self, read_only: bool = False) -> None:
        """Create the store's tables if needed; raise AuditUnavailable if it cannot.

        ``read_only`` (the verifier, the export): change nothing, create nothing, and
        raise :class:`NotAnAuditLog` when the store or its tables do not exist; every
        later read runs read-only, and writes are refused."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _exclusive(self) -> contextlib.AbstractContextManager[None]:
        """A write transaction that excludes every other writer of the store, durable
        once it exits normally; store failures raise AuditUnavailable."""

    @abstractmethod
    def _read_head(self) -> Head:
        """The head, inside :meth:`_exclusive`."""

    @abstractmethod
    def _write(self, records: Sequence[Record], head: Head) -> None:
        """Insert ``records`` and move the head to ``head``, inside :meth:`_exclusive`."""

    @abstractmethod
    def query(self, query: Query) -> list[Record]:
        """Records matching ``query`` in sequence order, at most ``query.limit``."""

    @abstractmethod
    def snapshot(self) -> contextlib.AbstractContextManager[Snapshot]:
        """Every record and the head as of one moment, for verification and export."""

    @abstractmethod
    def head(self) -> Head:
        """The head as last committed (by any writer of the store)."""

    def durable_head(self) -> Head:
        """The head as last committed, once it is durable (what a checkpoint may sign: a
        crash must not lose a record a checkpoint names). The same as :meth:`head` where
        every commit is durable when it returns."""
        return self.head()

    @abstractmethod
    def add_checkpoint(self, checkpoint: Checkpoint) -> bool:
        """Store ``checkpoint`` durably; False (nothing stored) if the store holds one for
        its sequence number already."""

    @abstractmethod
    def checkpoints(self, after: int = -1, limit: int = MAX_PAGE) -> list[Checkpoint]:
        """Stored checkpoints above sequence number ``after``, in order, at most ``limit``
        (none in a log written before checkpoints existed)."""

    @abstractmethod
    def latest_checkpoint(self) -> Checkpoint | None:
        """The stored checkpoint of the highest sequence number, if any."""

    def all_checkpoints(self) -> Iterator[Checkpoint]:
        """Every stored checkpoint in sequence order, a page at a time."""
        after = -1
        while page := self.checkpoints(after, MAX_PAGE):
            yield from page
            after = page[-1].seq

    def write(self, bodies: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Number, chain and store ``bodies`` in one transaction: committed, and durable
        once :meth:`sync` returns (at once, for stores whose commits are durable)."""
        with self._exclusive():
            head = self._read_head()
            records = chain(bodies, head)
            self._write(records, head.after(records))
        self.transactions += 1
        return records

    def sync(self) -> None:
        """Make every :meth:`write` that returned before this call durable; raise
        AuditUnavailable if that fails. Nothing to do where commits are durable."""
        return None

    def append(self, bodies: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Number, chain and store ``bodies`` in one durable transaction."""
        records = self.write(bodies)
        self.sync()
        return records

    def __enter__(self) -> AuditSink:
        self.open()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
