"""Liveness and readiness: public, no API key (probes carry none)."""

from __future__ import annotations

from litestar import Response, get

from xserve.api.auth import PUBLIC_OPT
from xserve.api.openapi import answers
from xserve.api.schemas import Live, Ready
from xserve.serving.dataplane import DataPlane

__all__ = ["live", "ready"]


@get("/health/live", sync_to_thread=False, opt=PUBLIC_OPT, responses=answers(Live))
def live() -> dict[str, str]:
    return {"status": "live"}


@get(
    "/health/ready",
    sync_to_thread=False,
    opt=PUBLIC_OPT,
    responses={
        **answers(Ready, description="Every model version found has loaded or failed"),
        **answers(Ready, status=503, description="Still loading"),
    },
)
def ready(dataplane: DataPlane) -> Response[dict[str, object]]:
    # Ready once the first scan has loaded or failed every version found.
    ok = dataplane.ready
    return Response({"ready": ok}, status_code=200 if ok else 503)
