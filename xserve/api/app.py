"""The Litestar application: its routes, its dependencies and the one lifespan that opens
and closes everything the server holds (audit log, repository watcher, job queue, cache)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio.to_thread
from litestar import Litestar
from litestar.di import Provide
from litestar.middleware import DefineMiddleware

from xserve.api.audit import AuditController
from xserve.api.auth import (
    authentication_from_settings,
    caller_of,
    principal_of,
    role_guard,
)
from xserve.api.drift import DriftController
from xserve.api.errors import exception_handlers
from xserve.api.explain import ExplainController
from xserve.api.health import live, ready
from xserve.api.limits import BodyLimits
from xserve.api.metrics import MetricsMiddleware, metrics_endpoint
from xserve.api.openapi import document, openapi_config
from xserve.api.outcomes import OutcomesController
from xserve.api.v1 import V1Controller
from xserve.api.v2 import V2Controller
from xserve.audit import audit_log_from_settings
from xserve.cache import open_cache
from xserve.explainers.attach import attach_inline
from xserve.grpc.server import grpc_server
from xserve.jobs import open_queue
from xserve.monitoring.metrics import process_exiting, watch_job_queue
from xserve.outcomes.service import OutcomeService
from xserve.repository.repository import ModelRepository
from xserve.repository.watcher import watch
from xserve.serving.dataplane import DataPlane
from xserve.serving.explain import ExplainJobs
from xserve.settings import Settings
from xserve.threads import threads_per_worker
from xserve.tracing import asgi_middleware

__all__ = ["create_app"]


async def refresh_performance(outcomes: OutcomeService, every: float, window: float) -> None:
    """Refresh the ``xserve_performance`` gauges every ``every`` seconds, off the loop."""
    while True:
        await asyncio.sleep(every)
        await anyio.to_thread.run_sync(outcomes.refresh, window)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings()
    repository = ModelRepository(
        settings.models_dir,
        threads=threads_per_worker(settings),
        on_load=[attach_inline],
        load_timeout=settings.load_timeout,
    )
    audit_log = audit_log_from_settings(settings)
    authentication = authentication_from_settings(settings)
    # Opening connects to nothing: a Redis that is down fails /explain (503), not startup.
    jobs = ExplainJobs(open_queue(settings), open_cache(settings), settings)
    dataplane = DataPlane(repository, settings, decisions=audit_log, jobs=jobs)
    outcomes = OutcomeService(
        audit_log,
        repository,
        settings.min_outcomes,
        settings.concept_drift_margin,
        settings.max_instances,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        # Each close is pushed as its resource opens: shutdown runs them in reverse order
        # (watcher, shadows, queue and cache, audit log), each even if one before fails.
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(process_exiting)
            if audit_log is not None:  # a store that cannot open stops the server here
                await anyio.to_thread.run_sync(audit_log.open)
                stack.push_async_callback(anyio.to_thread.run_sync, audit_log.close)
            await anyio.to_thread.run_sync(repository.scan)
            stack.push_async_callback(anyio.to_thread.run_sync, jobs.close)
            watch_job_queue(lambda: (settings.job_queue, jobs.queue.broker_length()))
            stack.callback(watch_job_queue, None)
            stack.push_async_callback(dataplane.shadows.drain)  # records in before the log closes
            watcher = asyncio.create_task(watch(repository, settings.poll_interval))
            stack.callback(watcher.cancel)
            if audit_log is not None and settings.performance_interval > 0:
                gauges = asyncio.create_task(
                    refresh_performance(
                        outcomes, settings.performance_interval, settings.performance_window
                    )
                )
                stack.callback(gauges.cancel)
            # gRPC in this process, over the same data plane: it stops first, calls in flight
            # answered and recorded before the shadows drain and the log closes.
            keys = authentication[0].keys if authentication else None
            await stack.enter_async_context(grpc_server(dataplane, settings, keys))
            yield

    app = Litestar(
        route_handlers=[
            live,
            ready,
            V1Controller,
            V2Controller,
            ExplainController,
            AuditController,
            DriftController,
            OutcomesController,
            metrics_endpoint,
        ],
        # Tracing first (only when OTEL_* turn it on: its span holds the whole request), then
        # metrics: it counts the 401s the key middleware answers.
        middleware=[
            *asgi_middleware(),
            MetricsMiddleware,
            *authentication,
            DefineMiddleware(BodyLimits, settings=settings),  # after auth: no key, no read
        ],
        # Roles are checked only where keys say who calls: an open server runs no guard.
        guards=[role_guard] if authentication else [],
        dependencies={
            "dataplane": Provide(lambda: dataplane, use_cache=True, sync_to_thread=False),
            "audit_log": Provide(lambda: audit_log, use_cache=True, sync_to_thread=False),
            "outcomes": Provide(lambda: outcomes, use_cache=True, sync_to_thread=False),
            "caller": Provide(caller_of, sync_to_thread=False),
            "principal": Provide(principal_of, sync_to_thread=False),
        },
        exception_handlers=exception_handlers,
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=openapi_config(),
        debug=False,
    )
    document(app)
    return app
