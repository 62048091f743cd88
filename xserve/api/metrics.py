"""``GET /metrics`` and the middleware that counts and times every routed request.

The middleware runs after routing (Litestar builds it into each route), so the
endpoint comes from the route's path template (``/v1/models/{model}/predict``
→ ``predict``): a fixed set, whatever paths callers send. The model and
version labels are the ones the data plane noted as it chose the version
(:func:`xserve.monitoring.metrics.note_model`), so only models the repository
knows ever become labels; requests that never reach a model carry "-" (NO_MODEL).
"""

from __future__ import annotations

import time
from typing import Any

import anyio.to_thread
from litestar import Request, Response, get
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from xserve.api.auth import PUBLIC_OPT
from xserve.monitoring import metrics

__all__ = ["MetricsMiddleware", "endpoint_of", "metrics_endpoint"]

_endpoints: dict[str, str] = {}


def endpoint_of(path_template: str) -> str:
    """The last fixed segment of a route's path: ``predict``, ``explain``, ``infer``,
    ``jobs``, ``models``, ``ready``, ``metrics``..."""
    name = _endpoints.get(path_template)
    if name is None:
        fixed = [p for p in path_template.split("/") if p and not p.startswith("{")]
        name = _endpoints[path_template] = fixed[-1] if fixed else "root"
    return name


class MetricsMiddleware:
    """Counts each answered request and its time, by model, version, endpoint and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        labels = metrics.RequestLabels()
        token = metrics.current_request.set(labels)
        status = 500  # what the client sees if the app fails before it answers

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics.current_request.reset(token)
            metrics.observe_request(
                labels.model,
                labels.version,
                endpoint_of(scope.get("path_template", "")),
                status,
                time.perf_counter() - started,
            )


@get("/metrics", include_in_schema=False, opt=PUBLIC_OPT)
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text format, or OpenMetrics when the Accept header asks for it; needs
    no API key (see xserve.api.auth)."""
    # Reading every process's files (and the drift statistics) is blocking work.
    body, content_type = await anyio.to_thread.run_sync(
        metrics.exposition, request.headers.get("accept")
    )
    return Response(body, media_type=content_type)
