"""REST v1 explanations: ``/explain`` by any method, ``/v1/jobs/{id}``, cache statistics.

Answers carry ``Server-Timing: app;dur=<ms>``: the time spent in the handler.
"""

from __future__ import annotations

import time
from typing import Any

from litestar import Controller, Response, get, post
from litestar.params import Parameter

from xserve.api.auth import requires
from xserve.api.openapi import AUTH, BEARER, BODY, answers, request_body
from xserve.api.schemas import EXPLAIN_EXAMPLE, CacheStats, ExplainRequest
from xserve.api.v1 import CLASS, MODEL_PATHS, REASONS, SUBJECT, JsonRequest, v1_request
from xserve.security.keys import Principal
from xserve.serving.dataplane import DataPlane
from xserve.serving.outcome import Answer, JobTicket, JobView

__all__ = ["ExplainController"]

WAIT = Parameter(
    ge=0,
    le=3600,
    default=0.0,
    description="Seconds to wait for a job to finish before answering 202 (capped by the server)",
)


def _timed(body: Any, status: int, started: float, **headers: str) -> Response[Any]:
    elapsed = (time.perf_counter() - started) * 1000
    timing = {"Server-Timing": f"app;dur={elapsed:.3f}"}
    return Response(body, status_code=status, headers={**timing, **headers})


class ExplainController(Controller):
    path = "/v1"
    tags = ["explain"]
    request_class = JsonRequest
    security = BEARER

    @post(
        [p + "/explain" for p in MODEL_PATHS],
        status_code=200,
        opt=requires("explain"),
        responses={
            **answers(Answer, *AUTH, *BODY, 404, 429, 503, description="Every explanation"),
            **answers(JobTicket, status=202, description="A job computes them: poll status_url"),
        },
        operation_class=request_body(ExplainRequest, EXPLAIN_EXAMPLE),
    )
    async def explain(
        self,
        dataplane: DataPlane,
        model: str,
        data: Any,
        caller: str | None,
        version: str | None = None,
        label: str | None = CLASS,
        reasons: int = REASONS,
        wait: float = WAIT,
        subject: str | None = SUBJECT,
    ) -> Response[Any]:
        """Explain `instances` with `method` (tree_shap, linear_shap, kernel_shap, lime,
        anchors) and its `params`: 200 when every instance is inline-fast or cached,
        else 202 with a job to poll at `status_url` (or 200 if it finishes within `?wait=S`).
        Without a version, the traffic policy chooses, as for predict (send the same
        `X-Subject-Id`)."""
        started = time.perf_counter()
        fields = data if isinstance(data, dict) else {}
        request = v1_request(
            "explain",
            model,
            version,
            data,
            method=fields.get("method"),
            params=fields.get("params") or {},
            label=label,
            reasons=reasons,
            caller=caller,
            subject=subject if version is None else None,
            wait=wait,
        )
        outcome = await dataplane.decide(request)
        if outcome.job is not None:
            return _timed(outcome.job, 202, started, Location=outcome.job.status_url)
        return _timed(outcome.answer, 200, started)

    @get(
        "/jobs/{job_id:str}",
        opt=requires("explain", "audit"),
        responses=answers(JobView, 400, *AUTH, 404, 422, 503),
    )
    async def job(
        self, dataplane: DataPlane, job_id: str, principal: Principal | None
    ) -> Response[Any]:
        """An explanation job: queued, running, succeeded (with `result`) or failed (`error`).
        With API keys, only its submitter or a key with the audit or admin role may read
        it; anyone else gets the 404 of an unknown job."""
        started = time.perf_counter()
        return _timed(await dataplane.job(job_id, principal), 200, started)

    @get("/cache/stats", responses=answers(CacheStats, *AUTH, 422, 503))
    async def cache_stats(self, dataplane: DataPlane) -> dict[str, Any]:
        """The explanation cache of this server process: hits, misses, evictions, size."""
        return await dataplane.cache_stats()
