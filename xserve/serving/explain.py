"""Explain by any method, for every front-end: inline at once, or cached, or through a job.

``explain`` answers 200 when every instance is inline-fast (``tree_shap``,
``linear_shap``) or already in the explanation cache; otherwise it submits one
job for the request (the worker reads the cached rows and computes the rest)
and answers 202 with the job's id, or, given ``wait``, waits that long for it.
Every explanation answered is first recorded in the decision log, whether it
comes from ``/explain`` or from ``GET /v1/jobs/{id}``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from xserve.cache import ExplanationCache, explanation_key
from xserve.errors import ExplainerError, InvalidInput, NotExplainable
from xserve.explainers.methods import (
    JobExplainer,
    canonical_params,
    check_offered,
    job_method,
    parse_params,
)
from xserve.explainers.reasons import DEFAULT_REASONS, class_index
from xserve.jobs.base import (
    JobQueue,
    JobSpec,
    JobStatus,
    decode_rows,
    encode_rows,
    poll_intervals,
)
from xserve.repository.version import ModelVersion
from xserve.runtimes.base import Matrix
from xserve.serving.dataplane import DataPlane
from xserve.serving.decision import Decision, new_request_id
from xserve.settings import Settings

__all__ = ["INLINE_METHODS", "ExplainAnswer", "Explanations"]

INLINE_METHODS = ("tree_shap", "linear_shap")
_INTERNAL = ("inputs", "worker_pid")
"""Fields of a job's result kept for the decision log, never shown."""


@dataclass
class ExplainAnswer:
    status: int
    """200 with explanations, or 202 with a job to poll."""
    body: dict[str, Any]


@dataclass
class ExplainRequest:
    method: str
    params: dict[str, Any]
    label: str | None


def _request(model: ModelVersion, payload: dict[str, Any], label: str | None) -> ExplainRequest:
    method = payload.get("method")
    if method is None:
        if model.inline is not None:
            method = model.inline.method
        elif model.manifest.explain.methods:
            method = model.manifest.explain.methods[0]
        else:
            raise NotExplainable(f"model {model.name!r} version {model.version} offers no method")
    if not isinstance(method, str):
        raise InvalidInput("method: expected a string")
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        raise InvalidInput("params: expected a JSON object")
    params = dict(params)
    in_params = params.pop("class", None)  # `class` may come as a parameter too
    if label is None and in_params is not None:
        label = str(in_params)
    class_index(model, label)  # a bad class is the caller's mistake: say so before work
    return ExplainRequest(method, params, label)


class Explanations:
    def __init__(
        self, dataplane: DataPlane, queue: JobQueue, cache: ExplanationCache, settings: Settings
    ) -> None:
        self.dataplane = dataplane
        self.queue = queue
        self.cache = cache
        self.settings = settings

    async def explain(
        self,
        name: str,
        version: str | None,
        payload: dict[str, Any],
        label: str | None = None,
        reasons: int = DEFAULT_REASONS,
        wait: float = 0.0,
        caller: str | None = None,
        subject: str | None = None,
    ) -> ExplainAnswer:
        # Without a version the traffic policy chooses, as for predict: a sticky split
        # explains a subject with the version that decided for it.
        model = self.dataplane.route(name, version, subject)
        x = self.dataplane.matrix(model, payload.get("instances"))
        req = _request(model, payload, label)
        if req.method in INLINE_METHODS:
            body = await self._inline(model, x, req, reasons)
        else:
            cls = job_method(req.method)
            check_offered(cls, model)
            params_text = canonical_params(parse_params(cls, req.params))
            found = await anyio.to_thread.run_sync(
                self._from_cache, model, cls, params_text, x, req.label, reasons
            )
            if found is None:
                return await self._submit(model, x, req, reasons, wait, payload, caller)
            body = {"method": cls.method, "explanations": found, "cached": [True] * len(found)}
        answer = {"model": model.name, "version": model.version, "request_id": new_request_id()}
        if "id" in payload:
            answer["id"] = payload["id"]
        answer.update(body)
        await self.dataplane.record(
            Decision("explain", model, answer["request_id"], caller, x, answer)
        )
        return ExplainAnswer(200, answer)

    async def _inline(
        self, model: ModelVersion, x: Matrix, req: ExplainRequest, reasons: int
    ) -> dict[str, Any]:
        inline = model.inline
        if inline is None or inline.method != req.method:
            why = model.inline_error if inline is None else f"its exact method is {inline.method}"
            raise NotExplainable(
                f"model {model.name!r} version {model.version}: no {req.method}: {why}"
            )
        if req.params:
            raise InvalidInput(f"params: {req.method} takes none, got {sorted(req.params)}")
        prediction = await self.dataplane.score(model, x, explain=True)
        explanations = prediction.to_dict(req.label, reasons)["explanations"]
        return {"method": req.method, "explanations": explanations, "cached": [False] * len(x)}

    def _from_cache(
        self,
        model: ModelVersion,
        cls: type[JobExplainer],
        params_text: str,
        x: Matrix,
        label: str | None,
        reasons: int,
    ) -> list[dict[str, Any]] | None:
        """Every instance's explanation from the cache, or None when any is missing."""
        keys = [explanation_key(model, cls.method, params_text, row) for row in x]
        records = self.cache.get_many(keys)
        if any(r is None for r in records):
            return None
        return [cls.render(model, r, label, reasons) for r in records if r is not None]

    async def _submit(
        self,
        model: ModelVersion,
        x: Matrix,
        req: ExplainRequest,
        reasons: int,
        wait: float,
        payload: dict[str, Any],
        caller: str | None,
    ) -> ExplainAnswer:
        spec = JobSpec(
            model=model.name,
            version=model.version,
            digest=model.digest,
            method=req.method,
            params=req.params,
            rows=encode_rows(x),
            label=req.label,
            reasons=reasons,
            client_id=payload.get("id"),
        )
        job_id = await anyio.to_thread.run_sync(self.queue.submit, spec)
        if wait > 0:
            state = await self.wait(job_id, min(wait, self.settings.explain_max_wait))
            if state.status == "succeeded":
                return ExplainAnswer(200, await self._delivered(state, caller))
            if state.status == "failed":
                raise ExplainerError(f"explanation job {job_id} failed: {state.error}")
        body = {
            "job_id": job_id,
            "status": "queued",
            "status_url": f"/v1/jobs/{job_id}",
            "model": model.name,
            "version": model.version,
            "method": req.method,
        }
        return ExplainAnswer(202, body)

    async def wait(self, job_id: str, timeout: float) -> JobStatus:
        """The job's state once finished, or after ``timeout`` seconds (without a thread
        held for the whole wait)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for delay in poll_intervals():
            state = await anyio.to_thread.run_sync(self.queue.status, job_id)
            left = deadline - loop.time()
            if state.finished or left <= 0:
                return state
            await asyncio.sleep(min(delay, left))
        raise AssertionError("unreachable")

    async def job(self, job_id: str, caller: str | None = None) -> dict[str, Any]:
        """``GET /v1/jobs/{id}``: the job's status, with its answer or error once finished."""
        state = await anyio.to_thread.run_sync(self.queue.status, job_id)
        body: dict[str, Any] = {"job_id": job_id, "status": state.status}
        if state.status == "succeeded":
            body["result"] = await self._delivered(state, caller)
        elif state.status == "failed":
            body["error"] = state.error
        return body

    async def _delivered(self, state: JobStatus, caller: str | None) -> dict[str, Any]:
        """A finished job's answer, recorded in the decision log before it is shown."""
        result = dict(state.result or {})
        inputs = result.get("inputs") or []
        answer = {k: v for k, v in result.items() if k not in _INTERNAL}
        answer["request_id"] = state.job_id
        model = self.dataplane.model(str(result["model"]), str(result["version"]))
        x = decode_rows(inputs)
        await self.dataplane.record(Decision("explain", model, state.job_id, caller, x, answer))
        return answer
