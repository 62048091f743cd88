"""The audit log the data plane records decisions in: group commit over an AuditSink.

A decision waits until its record is durable. Records that arrive while a
commit is running go together in the next one, so under load one fsync (or one
PostgreSQL round trip) covers many decisions, while a lone request is never
held back to wait for company. Commits run in a worker thread, off the event
loop. Any store failure refuses every decision of the batch (AuditUnavailable,
503): none is answered unrecorded.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from xserve.audit.base import AuditSink
from xserve.audit.entry import decision_body
from xserve.audit.record import Record
from xserve.decision import Decision
from xserve.errors import AuditUnavailable

__all__ = ["AuditLog"]

log = logging.getLogger(__name__)

MAX_BATCH = 512
"""Most records in one transaction."""

_Pending = tuple[dict[str, Any], "asyncio.Future[Record]"]


class AuditLog:
    """Implements the data plane's ``DecisionLog`` protocol."""

    def __init__(self, sink: AuditSink, digest_key: str | None = None) -> None:
        self.sink = sink
        self.digest_key = digest_key.encode() if digest_key else None
        self._pending: list[_Pending] = []
        self._drainer: asyncio.Task[None] | None = None
        # One thread of its own: commits are sequential anyway, the hop is cheaper than
        # anyio's shared pool, and a store connection stays with one thread.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xserve-audit")

    @property
    def commits(self) -> int:
        """Transactions committed so far (fewer than records when commits are grouped)."""
        return self.sink.transactions

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self.sink.open)

    async def close(self) -> None:
        if self._drainer is not None:
            await asyncio.gather(self._drainer, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._thread, self.sink.close)
        self._thread.shutdown()

    async def record(self, decision: Decision) -> None:
        await self.append(decision_body(decision, self.digest_key))

    async def append(self, body: dict[str, Any]) -> Record:
        """Store ``body`` (a record without seq and hashes); return it once durable."""
        future: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        self._pending.append((body, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        # A caller that goes away cancels only its own future; its record is still
        # committed with the others (the drainer skips futures already done).
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            bodies = [body for body, _ in batch]
            try:
                loop = asyncio.get_running_loop()
                records = await loop.run_in_executor(self._thread, self.sink.append, bodies)
            except Exception as exc:
                error = (
                    exc
                    if isinstance(exc, AuditUnavailable)
                    else AuditUnavailable(f"audit log: {type(exc).__name__}: {exc}")
                )
                log.error("audit commit of %d records failed: %s", len(batch), error.message)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), record in zip(batch, records, strict=True):
                if not future.done():
                    future.set_result(record)
