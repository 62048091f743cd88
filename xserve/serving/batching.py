"""Micro-batching: concurrent requests to one model version share one model call.

No request waits for company: when the model is idle, a request runs at once;
requests that arrive while a call is running are queued and go together in
the next call (up to ``max_rows`` rows, optionally after ``max_wait`` seconds
to gather more). Batched TreeSHAP and batched predicts cost much less a row,
so throughput rises under load while latency at low load is unchanged.

What follows the model call for each request can run in the same worker
thread: a request's ``finish`` (building its answer, say), then one ``seal``
of the whole batch (committing its audit records together). A request then
costs one trip to a worker thread and back, however much follows the model.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, overload

import numpy as np

from xserve.runtimes.base import Matrix

__all__ = ["MicroBatcher", "Seal"]

T = TypeVar("T")
R = TypeVar("R")

Seal = Callable[[Sequence[Any]], Sequence[BaseException | None]]
"""Given what each request of a batch finished with, the error (or None) for each."""

_Outcome = tuple[Any, BaseException | None]


class _Request:
    __slots__ = ("finish", "future", "x")

    def __init__(
        self, x: Matrix, finish: Callable[[Any], Any] | None, future: asyncio.Future[Any]
    ) -> None:
        self.x = x
        self.finish = finish
        self.future = future


class MicroBatcher(Generic[T]):
    def __init__(
        self,
        run: Callable[[Matrix], T],
        cut: Callable[[T, slice], T],
        max_rows: int = 32,
        max_wait: float = 0.0,
        seal: Seal | None = None,
    ) -> None:
        self.run = run
        self.cut = cut
        self.max_rows = max_rows
        self.max_wait = max_wait
        self.seal = seal
        self._queue: list[_Request] = []
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self.calls = 0
        """Model calls made (fewer than requests when batching works)."""

    @overload
    async def submit(self, x: Matrix) -> T: ...

    @overload
    async def submit(self, x: Matrix, finish: Callable[[T], R]) -> R: ...

    async def submit(self, x: Matrix, finish: Callable[[T], Any] | None = None) -> Any:
        """The model's output for ``x`` (``finish`` of it, when given, run in the worker
        thread), once the batch's ``seal`` accepted it."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(x, finish, future))
        if not self._busy:
            self._busy = True
            self._task = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[_Request]:
        batch: list[_Request] = []
        rows = 0
        while self._queue and (not batch or rows + len(self._queue[0].x) <= self.max_rows):
            request = self._queue.pop(0)
            batch.append(request)
            rows += len(request.x)
        return batch

    def _score(self, batch: list[_Request]) -> list[_Outcome]:
        """The model call and each request's finish. When the call fails, each request is
        tried alone, so that only the one at fault fails."""
        x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch])
        self.calls += 1
        try:
            result = self.run(x)
        except Exception as exc:
            if len(batch) == 1:
                return [(None, exc)]
            return [outcome for request in batch for outcome in self._score([request])]
        outcomes: list[_Outcome] = []
        start = 0
        for request in batch:
            stop = start + len(request.x)
            part = result if len(batch) == 1 else self.cut(result, slice(start, stop))
            start = stop
            try:
                outcomes.append((part if request.finish is None else request.finish(part), None))
            except Exception as exc:  # this request's own fault
                outcomes.append((None, exc))
        return outcomes

    def _seal(self, outcomes: list[_Outcome]) -> list[_Outcome]:
        if self.seal is None:
            return outcomes
        done = [i for i, (_, error) in enumerate(outcomes) if error is None]
        try:
            errors = self.seal([outcomes[i][0] for i in done])
        except Exception as exc:
            errors = [exc] * len(done)
        for i, error in zip(done, errors, strict=True):
            if error is not None:
                outcomes[i] = (None, error)
        return outcomes

    async def _call(self, batch: list[_Request]) -> None:
        """Run ``batch`` in a worker thread; return once the model is free for the next
        batch. Its callers are answered when its seal ends, which may be later: a batch
        waiting meanwhile is scored while this one seals (its fsync, say)."""
        loop = asyncio.get_running_loop()
        free: asyncio.Future[None] = loop.create_future()

        def release() -> None:
            if not free.done():
                free.set_result(None)

        def settle(outcomes: list[_Outcome]) -> None:
            release()
            for request, (value, error) in zip(batch, outcomes, strict=True):
                if request.future.done():  # the caller went away
                    continue
                if error is not None:
                    request.future.set_exception(error)
                else:
                    request.future.set_result(value)

        def work() -> None:  # in the worker thread
            try:
                outcomes = self._score(batch)
                if self._queue:  # others wait: the model is free for them already
                    loop.call_soon_threadsafe(release)
                outcomes = self._seal(outcomes)
            except BaseException as exc:  # nothing may leave a caller waiting for ever
                outcomes = [(None, exc)] * len(batch)
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(settle, outcomes)

        loop.run_in_executor(None, work)
        await free

    async def _drain(self) -> None:
        try:
            await self._call(self._take())  # the model was idle: no waiting
            while self._queue:
                if self.max_wait > 0 and sum(len(r.x) for r in self._queue) < self.max_rows:
                    await asyncio.sleep(self.max_wait)
                await self._call(self._take())
        finally:
            self._busy = False
