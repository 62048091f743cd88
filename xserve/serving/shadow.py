"""Shadow traffic: a copy of each live request goes to the model's shadow version.

After the live answer is produced and recorded, :meth:`ShadowRunner.offer`
starts a task that scores the same instances with the shadow version (with an
inline explanation when the live request asked for one), records that answer
in the decision log as its own record (kind ``shadow``, under the live
request's id) and compares its predictions with the live ones (metrics). The
caller's answer never waits for it and never sees it; a shadow that fails
fails alone. At most ``max_pending`` copies are in flight per server process:
beyond that, copies are dropped and counted, so a slow shadow cannot pile up
work without bound (it still shares the process's CPU and model threads with
live traffic while it runs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

from xserve.errors import XServeError
from xserve.explainers.reasons import class_index
from xserve.monitoring import metrics
from xserve.repository.version import ModelVersion
from xserve.runtimes.base import Matrix
from xserve.serving.prediction import Prediction
from xserve.serving.request import DecisionRequest, Kind

__all__ = ["SHADOW_KIND", "ShadowRunner"]

log = logging.getLogger(__name__)

SHADOW_KIND: Kind = "shadow"
"""The ``kind`` of a shadow's audit records."""


class Scored(Protocol):
    @property
    def prediction(self) -> Prediction | None: ...


Decide = Callable[[ModelVersion, Matrix, DecisionRequest, str], Awaitable[Scored]]
"""The data plane's scoring path: version, rows, request, request id -> outcome."""


class ShadowRunner:
    def __init__(
        self,
        decide: Decide,
        shadow_of: Callable[[str], ModelVersion | None],
        max_pending: int = 128,
    ) -> None:
        self.decide = decide
        self.shadow_of = shadow_of
        self.max_pending = max_pending
        self._tasks: set[asyncio.Task[None]] = set()

    def offer(
        self,
        live: ModelVersion,
        x: Matrix,
        request: DecisionRequest,
        live_predictions: list[Any],
        request_id: str,
    ) -> None:
        """Send a copy to ``live``'s shadow version, if the model has one (cheap otherwise:
        one dict lookup)."""
        shadow = self.shadow_of(live.name)
        if shadow is None or shadow is live:  # the split already sent this one to it
            return
        if len(self._tasks) >= self.max_pending:
            metrics.shadow_dropped(live.name, live.version, shadow.version, "dropped")
            return
        task = asyncio.get_running_loop().create_task(
            self._run(live, shadow, x, request, live_predictions, request_id)
        )
        self._tasks.add(task)  # a reference, or the loop may drop the task mid-flight
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        live: ModelVersion,
        shadow: ModelVersion,
        x: Matrix,
        request: DecisionRequest,
        live_predictions: list[Any],
        request_id: str,
    ) -> None:
        try:
            label = request.label
            try:
                class_index(shadow, label)
            except XServeError:  # ?class= names a class the shadow does not have
                label = None
            copy = replace(
                request,
                kind=SHADOW_KIND,
                explain=request.explain and shadow.inline is not None,
                label=label,
            )
            outcome = await self.decide(shadow, x, copy, request_id)
            predictions = outcome.prediction.labels if outcome.prediction else []
        except Exception as exc:
            log.warning(
                "shadow %s version %s failed for request %s: %s",
                shadow.name,
                shadow.version,
                request_id,
                exc,
            )
            metrics.shadow_dropped(live.name, live.version, shadow.version, "failed")
            return
        metrics.observe_shadow(
            live.name,
            live.version,
            shadow.version,
            live_predictions,
            predictions,
            shadow.task == "regression",
        )

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float = 5.0) -> None:
        """Let copies in flight finish (before the decision log closes at shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
