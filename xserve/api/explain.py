"""REST v1 explanations: ``/explain`` by any method, ``/v1/jobs/{id}``, cache statistics.

Wired into the app by :class:`ExplainPlugin`, which also opens the job queue
and the explanation cache for the server process and closes them at shutdown.
Answers carry ``Server-Timing: app;dur=<ms>``: the time spent in the handler.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from litestar import Controller, Litestar, Response, get, post
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.params import Parameter
from litestar.plugins import InitPluginProtocol

from xserve.api.v1 import CLASS, REASONS, SUBJECT, payload_object
from xserve.cache import open_cache
from xserve.jobs import open_queue
from xserve.monitoring import metrics
from xserve.serving.dataplane import DataPlane
from xserve.serving.explain import ExplainAnswer, Explanations
from xserve.settings import Settings

__all__ = ["ExplainController", "ExplainPlugin"]

WAIT = Parameter(
    ge=0,
    le=3600,
    default=0.0,
    description="Seconds to wait for a job to finish before answering 202 (capped by the server)",
)


def _timed(body: dict[str, Any], status: int, started: float, **headers: str) -> Response[Any]:
    elapsed = (time.perf_counter() - started) * 1000
    timing = {"Server-Timing": f"app;dur={elapsed:.3f}"}
    return Response(body, status_code=status, headers={**timing, **headers})


def _answer(answer: ExplainAnswer, started: float) -> Response[Any]:
    if answer.status == 202:
        return _timed(answer.body, 202, started, Location=answer.body["status_url"])
    return _timed(answer.body, answer.status, started)


class ExplainController(Controller):
    path = "/v1"
    tags = ["explain"]

    @post("/models/{model:str}/explain")
    async def explain(
        self,
        explanations: Explanations,
        model: str,
        data: Any,
        caller: str | None,
        label: str | None = CLASS,
        reasons: int = REASONS,
        wait: float = WAIT,
        subject: str | None = SUBJECT,
    ) -> Response[Any]:
        """Explain `instances` with `method` (tree_shap, linear_shap, kernel_shap, lime,
        anchors) and its `params`: 200 when every instance is inline-fast or cached,
        else 202 with a job to poll at `status_url` (or 200 if it finishes within `?wait=S`).
        The traffic policy chooses the version, as for predict (send the same `X-Subject-Id`)."""
        started = time.perf_counter()
        answer = await explanations.explain(
            model, None, payload_object(data), label, reasons, wait, caller=caller, subject=subject
        )
        return _answer(answer, started)

    @post("/models/{model:str}/versions/{version:str}/explain")
    async def explain_version(
        self,
        explanations: Explanations,
        model: str,
        version: str,
        data: Any,
        caller: str | None,
        label: str | None = CLASS,
        reasons: int = REASONS,
        wait: float = WAIT,
    ) -> Response[Any]:
        """Explain with one given version."""
        started = time.perf_counter()
        answer = await explanations.explain(
            model, version, payload_object(data), label, reasons, wait, caller=caller
        )
        return _answer(answer, started)

    @get("/jobs/{job_id:str}")
    async def job(
        self, explanations: Explanations, job_id: str, caller: str | None
    ) -> Response[Any]:
        """An explanation job: queued, running, succeeded (with `result`) or failed (`error`)."""
        started = time.perf_counter()
        return _timed(await explanations.job(job_id, caller), 200, started)

    @get("/cache/stats")
    async def cache_stats(self, explanations: Explanations) -> dict[str, Any]:
        """The explanation cache of this server process: hits, misses, evictions, size."""
        stats = await anyio.to_thread.run_sync(explanations.cache.stats)
        return {**stats.to_dict(), "job_queue": explanations.queue.backend}


class ExplainPlugin(InitPluginProtocol):
    """Adds the explanation routes, and the queue and cache they use, to the app."""

    def __init__(self, dataplane: DataPlane, settings: Settings) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.explanations: Explanations | None = None

    def _provide(self) -> Explanations:
        if self.explanations is None:
            raise RuntimeError("explanations are not open: the app's lifespan has not started")
        return self.explanations

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: Litestar) -> AsyncIterator[None]:
        # Opening connects to nothing: a Redis that is down fails /explain (503), not startup.
        queue = open_queue(self.settings)
        cache = open_cache(self.settings)
        self.explanations = Explanations(self.dataplane, queue, cache, self.settings)
        metrics.watch_job_queue(lambda: (self.settings.job_queue, queue.broker_length()))
        try:
            yield
        finally:
            metrics.watch_job_queue(None)
            await anyio.to_thread.run_sync(queue.close)
            cache.close()

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.append(ExplainController)
        app_config.dependencies["explanations"] = Provide(self._provide, sync_to_thread=False)
        app_config.lifespan.append(self._lifespan)
        return app_config
