"""The Litestar application: wiring of the data plane, routes and the repository watcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import anyio.to_thread
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from xserve import __version__
from xserve.api.audit import AuditController
from xserve.api.auth import caller_of, guards_from_settings
from xserve.api.drift import DriftController
from xserve.api.errors import exception_handlers
from xserve.api.explain import ExplainPlugin
from xserve.api.health import live, ready
from xserve.api.metrics import MetricsMiddleware, metrics_endpoint
from xserve.api.v1 import V1Controller
from xserve.api.v2 import V2Controller
from xserve.audit import audit_log_from_settings
from xserve.monitoring.metrics import process_exiting
from xserve.repository.repository import ModelRepository
from xserve.serving.dataplane import DataPlane
from xserve.settings import Settings
from xserve.threads import threads_per_worker

__all__ = ["create_app"]

log = logging.getLogger("xserve")


async def _watch(repository: ModelRepository, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(repository.scan)
        except Exception:  # keep watching whatever one scan hit
            log.exception("repository scan failed")


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings()
    repository = ModelRepository(settings.models_dir, threads=threads_per_worker(settings))
    audit_log = audit_log_from_settings(settings)
    guards = guards_from_settings(settings)
    dataplane = DataPlane(repository, settings, decisions=audit_log)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        if audit_log is not None:  # a store that cannot open stops the server here
            await audit_log.open()
        await anyio.to_thread.run_sync(repository.scan)
        watcher = asyncio.create_task(_watch(repository, settings.poll_interval))
        try:
            yield
        finally:
            watcher.cancel()
            await dataplane.shadows.drain()  # their records go in before the log closes
            if audit_log is not None:
                await audit_log.close()
            process_exiting()

    return Litestar(
        route_handlers=[
            live,
            ready,
            V1Controller,
            V2Controller,
            AuditController,
            DriftController,
            metrics_endpoint,
        ],
        middleware=[MetricsMiddleware],
        dependencies={
            "dataplane": Provide(lambda: dataplane, use_cache=True, sync_to_thread=False),
            "audit_log": Provide(lambda: audit_log, use_cache=True, sync_to_thread=False),
            "caller": Provide(caller_of, sync_to_thread=False),
        },
        guards=guards,
        exception_handlers=exception_handlers,
        lifespan=[lifespan],
        plugins=[ExplainPlugin(dataplane, settings)],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="xserve", version=__version__, path="/docs"),
        debug=False,
    )
