"""The audit log the data plane records decisions in: group commit over an AuditSink.

A decision waits until its record is durable. The thread that ran a micro-batch
commits its decisions itself (other answers commit from a worker thread too);
threads that arrive while a commit runs wait, and whichever finds none running
commits for all of them, so under load one fsync (or one PostgreSQL round trip)
covers many decisions while a lone one is never held back. The fsync that makes
a commit durable runs after the store's write lock is released, while the next
group is written. Any store failure refuses every decision of the group
(AuditUnavailable, 503): none is answered unrecorded. With a checkpointer, each durable
commit tells it the head it made; signing happens on the checkpointer's own thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from xserve.audit.base import AuditSink, Head, Query
from xserve.audit.checkpointer import Checkpointer
from xserve.audit.entry import entry_body
from xserve.audit.record import Record
from xserve.audit.verify import Verdict, verify_sink
from xserve.errors import AuditUnavailable
from xserve.outcomes.record import Observed
from xserve.serving.decision import Decision
from xserve.tracing import span

__all__ = ["AuditLog"]

log = logging.getLogger(__name__)

_Stored = tuple[Record | None, Exception | None]


class _Waiting:
    """One thread's decisions in a group commit, and once committed, their errors."""

    __slots__ = ("decisions", "errors", "taken")

    def __init__(self, decisions: Sequence[Decision | Observed]) -> None:
        self.decisions = decisions
        self.taken = False
        """In a group being committed: wait for its errors, commit nothing."""
        self.errors: list[Exception | None] | None = None


class AuditLog:
    """Implements the data plane's ``DecisionLog`` protocol."""

    def __init__(
        self, sink: AuditSink, digest_key: str, checkpoints: Checkpointer | None = None
    ) -> None:
        if not digest_key:
            raise ValueError("the audit log needs a digest key for personal features")
        self.sink = sink
        self.checkpoints = checkpoints
        """Signs the chain head as records come (None: no signing key configured)."""
        self.digest_key = digest_key.encode()
        self.records = 0
        """Records committed through this log (``records / commits``: the group size)."""
        self._sink_lock = threading.Lock()
        self._turn = threading.Condition()  # the group commit
        self._waiting: list[_Waiting] = []
        self._committing = False
        self._closed = False

    @property
    def commits(self) -> int:
        """Transactions committed so far (fewer than records when commits are grouped)."""
        return self.sink.transactions

    def query(self, query: Query) -> list[Record]:
        """Blocking: stored records matching ``query``, in sequence order."""
        return self.sink.query(query)

    def verify(self) -> Verdict:
        """Blocking: check the whole hash chain."""
        return verify_sink(self.sink)

    def open(self) -> None:
        """Blocking: create the store's tables if needed; raise AuditUnavailable if not."""
        with self._sink_lock:
            self.sink.open()
            if self.checkpoints is not None:
                self.checkpoints.start()

    def close(self) -> None:
        """Blocking: refuse later decisions, let a commit under way finish, sign the head
        a last time (with a checkpointer), close the store."""
        with self._turn:
            self._closed = True
            while self._committing:
                self._turn.wait()
        if self.checkpoints is not None:
            self.checkpoints.close()
        with self._sink_lock:
            self.sink.close()

    def commit(self, decisions: Sequence[Decision | Observed]) -> list[Exception | None]:
        """Blocking, from any thread but the event loop's: store the decisions' records
        (or outcomes') durably; for each, the error that refuses it, or None.

        Decisions of threads that arrive while a commit runs wait and go together in the
        next one (group commit): whichever of them finds no commit running commits for
        all."""
        with span("xserve.audit.commit", {"xserve.records": len(decisions)}):
            return self._commit(decisions)

    def _commit(self, decisions: Sequence[Decision | Observed]) -> list[Exception | None]:
        mine = _Waiting(decisions)
        with self._turn:
            if self._closed:
                return [AuditUnavailable("audit log: closed")] * len(decisions)
            self._waiting.append(mine)
            while mine.errors is None and (mine.taken or self._committing):
                self._turn.wait()
            if mine.errors is not None:  # another thread committed them
                return mine.errors
            self._committing = True
            group, self._waiting = self._waiting, []
            for waiting in group:
                waiting.taken = True
        stored: list[_Stored] = []
        try:
            try:
                stored = self._store([d for waiting in group for d in waiting.decisions])
            finally:
                with self._turn:  # the next group is written while this one's fsync runs
                    self._committing = False
                    self._turn.notify_all()
            stored = self._durable(stored)
            if self.checkpoints is not None:
                self._made_durable(stored)
        finally:
            outcomes = iter(stored)
            with self._turn:
                for waiting in group:
                    waiting.errors = [
                        next(outcomes, (None, AuditUnavailable("audit log: commit failed")))[1]
                        for _ in waiting.decisions
                    ]
                self._turn.notify_all()
        return mine.errors or []

    def _store(self, decisions: Sequence[Decision | Observed]) -> list[_Stored]:
        """Build the decisions' bodies and commit them together (not yet durable: see
        :meth:`_durable`): a record or an error for each."""
        stored: list[_Stored] = []
        bodies: list[Mapping[str, Any]] = []
        for decision in decisions:
            try:
                bodies.append(entry_body(decision, self.digest_key))
            except Exception as exc:  # this decision's fault: refuse it alone
                stored.append((None, exc))
                continue
            stored.append((None, None))
        if not bodies:
            return stored
        try:
            with self._sink_lock:
                records = iter(self.sink.write(bodies))
        except Exception as exc:
            return _refused(stored, exc)
        self.records += len(bodies)
        return [(None, e) if e is not None else (next(records), None) for _, e in stored]

    def _made_durable(self, stored: list[_Stored]) -> None:
        """Tell the checkpointer the head this durable commit made (its last record)."""
        assert self.checkpoints is not None
        for record, error in reversed(stored):
            if record is not None and error is None:
                self.checkpoints.noticed(Head(record.seq, record.hash))
                return

    def _durable(self, stored: list[_Stored]) -> list[_Stored]:
        """``stored`` once the store made it durable; every record refused if it cannot."""
        if any(record is not None for record, _ in stored):
            try:
                self.sink.sync()
            except Exception as exc:
                return _refused(stored, exc)
        return stored


def _refused(stored: list[_Stored], exc: Exception) -> list[_Stored]:
    """``stored`` with each record (not yet durable) refused for the store's failure."""
    error = (
        exc
        if isinstance(exc, AuditUnavailable)
        else AuditUnavailable(f"audit log: {type(exc).__name__}: {exc}")
    )
    n = sum(1 for _, e in stored if e is None)
    log.error("audit commit of %d records failed: %s", n, error.message)
    return [(None, e if e is not None else error) for _, e in stored]
