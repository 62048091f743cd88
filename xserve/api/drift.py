"""REST v1 live drift: recent traffic of a model version against its background."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get

from xserve.api.openapi import AUTH, BEARER, answers
from xserve.api.schemas import DriftReport
from xserve.serving.dataplane import DataPlane

__all__ = ["DriftController"]


class DriftController(Controller):
    path = "/v1/models"
    tags = ["v1"]
    security = BEARER

    # sync_to_thread: the statistics are computed here, on read, off the event loop.
    @get(
        ["/{model:str}/drift", "/{model:str}/versions/{version:str}/drift"],
        sync_to_thread=True,
        responses=answers(DriftReport, 400, *AUTH, 404, 503),
    )
    def drift(self, dataplane: DataPlane, model: str, version: str | None = None) -> dict[str, Any]:
        """Per-feature PSI and KS statistic of the serving (or given) version's last
        `XSERVE_DRIFT_WINDOW` input rows against its background, with the window covered.
        Status: `ok` (PSI < 0.1), `warn` (< 0.25), `drift`; null below 30 rows."""
        return dataplane.drift_report(model, version)
