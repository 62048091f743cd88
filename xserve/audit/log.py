"""The audit log the data plane records decisions in: group commit over an AuditSink.

A decision waits until its record is durable. Records that arrive while a
commit is running go together in the next one, so under load one fsync (or one
PostgreSQL round trip) covers many decisions, while a lone request is never
held back to wait for company. Any store failure refuses every decision of the
batch (AuditUnavailable, 503): none is answered unrecorded.

Decisions arrive by two ways:

- ``commit`` (blocking): the model's worker thread commits a micro-batch's
  decisions itself, right after the model call, so a prediction costs one trip
  to a worker thread and back with the audit on as with it off. Threads that
  arrive while a commit runs wait; whichever finds none running commits for all.
- ``record`` / ``append`` (async, for explanations and other records): the event
  loop only queues the decision and hands the decisions of one turn of the loop
  to the log's own thread together; that thread builds, hashes and commits them
  and wakes the loop once per commit.

Both write through one store call at a time (``_store``); the fsync that makes
a commit durable (``_durable``) runs after it, while the next commit is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from xserve.audit.base import AuditSink
from xserve.audit.entry import decision_body
from xserve.audit.record import Record
from xserve.errors import AuditUnavailable
from xserve.serving.decision import Decision

__all__ = ["MAX_BATCH", "AuditLog"]

log = logging.getLogger(__name__)

MAX_BATCH = 512
"""Most records in one transaction."""


class _Entry:
    """A decision (or a ready body) waiting for its record, and who waits for it."""

    __slots__ = ("future", "item")

    def __init__(self, item: Decision | Mapping[str, Any], future: asyncio.Future[Any]) -> None:
        self.item = item
        self.future = future


class _Call:
    """A call to run in the audit thread after the records queued before it."""

    __slots__ = ("fn", "future", "last")

    def __init__(self, fn: Callable[[], None], future: asyncio.Future[Any], last: bool) -> None:
        self.fn = fn
        self.future = future
        self.last = last
        """The thread ends after this call (close)."""


_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]
_Stored = tuple[Record | None, Exception | None]


def _settle(outcomes: list[_Outcome]) -> None:
    """On the event loop: answer each waiting future (a caller may have gone away)."""
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _hand_back(outcomes: list[_Outcome]) -> None:
    """From the audit thread: one wake-up per event loop for a whole commit."""
    loops: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        loops.setdefault(outcome[0].get_loop(), []).append(outcome)
    for loop, mine in loops.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_settle, mine)


class _Waiting:
    """One thread's decisions in a group commit, and once committed, their errors."""

    __slots__ = ("decisions", "errors", "taken")

    def __init__(self, decisions: Sequence[Decision]) -> None:
        self.decisions = decisions
        self.taken = False
        """In a group being committed: wait for its errors, commit nothing."""
        self.errors: list[Exception | None] | None = None


class AuditLog:
    """Implements the data plane's ``DecisionLog`` protocol."""

    def __init__(self, sink: AuditSink, digest_key: str | None = None) -> None:
        self.sink = sink
        self.digest_key = digest_key.encode() if digest_key else None
        self.records = 0
        """Records committed through this log (``records / commits``: the group size)."""
        self._queue: queue.SimpleQueue[list[_Entry] | _Call] = queue.SimpleQueue()
        self._gathering: dict[asyncio.AbstractEventLoop, list[_Entry]] = {}
        self._thread: threading.Thread | None = None
        self._sink_lock = threading.Lock()  # the audit thread and scoring threads share the sink
        self._turn = threading.Condition()  # group commit of the scoring threads' decisions
        self._waiting: list[_Waiting] = []
        self._committing = False
        self._closed = False

    @property
    def commits(self) -> int:
        """Transactions committed so far (fewer than records when commits are grouped)."""
        return self.sink.transactions

    async def open(self) -> None:
        await self._call(self.sink.open)

    async def close(self) -> None:
        """Commit what is queued, then close the store and end the thread."""
        if self._closed:
            return
        self._closed = True  # nothing is queued after the last call
        await self._call(self._close_sink, last=True)

    def _close_sink(self) -> None:
        with self._sink_lock:
            self.sink.close()

    async def record(self, decision: Decision) -> None:
        await self._submit(decision)

    async def append(self, body: Mapping[str, Any]) -> Record:
        """Store ``body`` (a record without seq and hashes); return it once durable."""
        record: Record = await self._submit(body)
        return record

    def _put(self, job: list[_Entry] | _Call) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="xserve-audit", daemon=True)
            self._thread.start()
        self._queue.put(job)

    async def _submit(self, item: Decision | Mapping[str, Any]) -> Any:
        if self._closed:
            raise AuditUnavailable("audit log: closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        batch = self._gathering.get(loop)
        if batch is None:
            # The decisions this loop iteration records go to the thread together, at its
            # end: those a micro-batch answered at once share a commit from the start.
            batch = self._gathering[loop] = []
            loop.call_soon(self._hand_over, loop)
        batch.append(_Entry(item, future))
        # A caller that goes away cancels only its own future; its record is still
        # committed with the others (futures already done are skipped).
        return await future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._gathering.pop(loop, None)
        if batch:
            self._put(batch)

    async def _call(self, fn: Callable[[], None], last: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._hand_over(loop)  # the records gathered so far go first
        future: asyncio.Future[None] = loop.create_future()
        self._put(_Call(fn, future, last))
        await future

    # -- the audit thread --------------------------------------------------------------

    def _run(self) -> None:
        jobs = self._queue
        while True:
            batch: list[_Entry] = []
            job: list[_Entry] | _Call | None = jobs.get()  # sleep until there is work
            while isinstance(job, list):  # everything queued meanwhile goes together
                batch.extend(job)
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    job = None
            for start in range(0, len(batch), MAX_BATCH):
                self._commit(batch[start : start + MAX_BATCH])
            if isinstance(job, _Call):
                error: BaseException | None = None
                try:
                    job.fn()
                except Exception as exc:
                    error = exc
                _hand_back([(job.future, None, error)])
                if job.last:
                    return

    def _commit(self, batch: list[_Entry]) -> None:
        stored = self._durable(self._store([entry.item for entry in batch]))
        _hand_back([(entry.future, *outcome) for entry, outcome in zip(batch, stored, strict=True)])

    def commit(self, decisions: Sequence[Decision]) -> list[Exception | None]:
        """Blocking, from any thread but the event loop's: store the decisions' records
        durably; for each decision, the error that refuses it, or None.

        A micro-batch's worker thread calls this right after the model, so that a
        decision costs no trip to the audit thread and back. Decisions of threads that
        arrive while a commit runs wait and go together in the next one (group commit):
        whichever of them finds no commit running commits for all."""
        if self._closed:
            return [AuditUnavailable("audit log: closed")] * len(decisions)
        mine = _Waiting(decisions)
        with self._turn:
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

    def _store(self, items: Sequence[Decision | Mapping[str, Any]]) -> list[_Stored]:
        """Build the items' bodies and commit them together (not yet durable: see
        :meth:`_durable`): a record or an error for each."""
        stored: list[_Stored] = []
        bodies: list[Mapping[str, Any]] = []
        for item in items:
            if isinstance(item, Decision):
                try:
                    item = decision_body(item, self.digest_key)
                except Exception as exc:  # this decision's fault: refuse it alone
                    stored.append((None, exc))
                    continue
            stored.append((None, None))
            bodies.append(item)
        if not bodies:
            return stored
        try:
            with self._sink_lock:
                records = iter(self.sink.write(bodies))
        except Exception as exc:
            return _refused(stored, exc)
        self.records += len(bodies)
        return [(None, e) if e is not None else (next(records), None) for _, e in stored]

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
