"""Explanations by the model-agnostic methods: the cache first, else one job per request.

A job's worker records the decision when the job finishes (``xserve.jobs.run``), so
waiting for a job or reading it records nothing more.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import msgspec

from xserve.cache import ExplanationCache, explanation_key
from xserve.errors import ExplainerError, InvalidInput, JobNotFound, NotExplainable
from xserve.explainers.methods import (
    JobExplainer,
    canonical_params,
    check_offered,
    job_method,
    parse_params,
)
from xserve.jobs.base import JobQueue, JobSpec, JobStatus, encode_rows, poll_intervals
from xserve.jobs.limits import check_job_size
from xserve.repository.version import ModelVersion
from xserve.runtimes.base import Matrix
from xserve.security.keys import Principal
from xserve.serving.outcome import Answer, Explanation, JobTicket, JobView
from xserve.serving.request import DecisionRequest
from xserve.settings import Settings
from xserve.tracing import inject, span

__all__ = [
    "INLINE_METHODS",
    "READ_ANY_JOB",
    "ExplainJobs",
    "JobPlan",
    "job_answer",
    "may_read",
    "resolve_method",
]

INLINE_METHODS = ("tree_shap", "linear_shap")


def resolve_method(
    model: ModelVersion, request: DecisionRequest
) -> tuple[str, dict[str, Any], str | None]:
    """The request's method (default: the version's inline one, else its first job
    method), its params without ``class``, and the class to explain."""
    method = request.method
    if method is None:
        if model.inline is not None:
            method = model.inline.method
        elif model.manifest.explain.methods:
            method = model.manifest.explain.methods[0]
        else:
            raise NotExplainable(f"model {model.name!r} version {model.version} offers no method")
    if not isinstance(method, str):
        raise InvalidInput("method: expected a string")
    if not isinstance(request.params, dict):
        raise InvalidInput("params: expected a JSON object")
    params = dict(request.params)
    in_params = params.pop("class", None)  # `class` may come as a parameter too
    label = request.label
    if label is None and in_params is not None:
        label = str(in_params)
    return method, params, label


READ_ANY_JOB = ("audit", "admin")
"""Roles that may read anyone's job; others read only the jobs they submitted."""


def may_read(state: JobStatus, reader: Principal | None) -> bool:
    """Whether ``reader`` may see the job: without keys (no reader) or for a job submitted
    without them, anyone; else its submitter, or a key with the audit or admin role."""
    if reader is None or state.submitter is None:
        return True
    return state.submitter == reader.name or any(r in reader.roles for r in READ_ANY_JOB)


def job_answer(result: Any) -> Answer:
    """A finished job's answer, as its worker stored it."""
    return msgspec.convert(result, Answer)


@dataclass(frozen=True)
class JobPlan:
    """A job method checked against the version, with its canonical parameters."""

    cls: type[JobExplainer]
    params_text: str

    @property
    def method(self) -> str:
        return self.cls.method


class ExplainJobs:
    def __init__(self, queue: JobQueue, cache: ExplanationCache, settings: Settings) -> None:
        self.queue = queue
        self.cache = cache
        self.settings = settings

    def plan(self, model: ModelVersion, request: DecisionRequest) -> JobPlan:
        """Check the method is offered and its params valid: the caller's mistakes first."""
        cls = job_method(str(request.method))
        check_offered(cls, model)
        return JobPlan(cls, canonical_params(parse_params(cls, request.params)))

    def cached(
        self, model: ModelVersion, plan: JobPlan, x: Matrix, request: DecisionRequest
    ) -> list[Explanation] | None:
        """Every instance's explanation from the cache, or None when any is missing."""
        keys = [explanation_key(model, plan.method, plan.params_text, row) for row in x]
        records = self.cache.get_many(keys)
        if any(r is None for r in records):
            return None
        return [plan.cls.render(model, r, request.label, request.reasons) for r in records if r]

    async def submit(
        self, model: ModelVersion, x: Matrix, request: DecisionRequest
    ) -> tuple[JobTicket, Answer | None]:
        """Queue a job for ``x``; with ``request.wait``, wait that long for its answer.
        A job bigger than ``job_max_work`` is refused (413), and one past the queue's bounds
        (429, raised by the queue): only work that would be queued is ever refused."""
        plan = self.plan(model, request)
        check_job_size(
            plan.method,
            json.loads(plan.params_text),
            x.shape[0],
            x.shape[1],
            self.settings.job_max_work,
        )
        where = {"xserve.model": model.name, "xserve.version": model.version}
        with span("xserve.job.submit", where, kind="PRODUCER"):
            spec = JobSpec(
                model=model.name,
                version=model.version,
                digest=model.digest,
                method=str(request.method),
                params=dict(request.params),
                rows=encode_rows(x),
                label=request.label,
                reasons=request.reasons,
                client_id=request.client_id,
                caller=request.caller,
                trace=inject(),  # the worker's job span continues this trace
            )
            job_id = await anyio.to_thread.run_sync(self.queue.submit, spec)
        ticket = JobTicket(
            job_id, "queued", f"/v1/jobs/{job_id}", model.name, model.version, spec.method
        )
        if request.wait > 0:
            state = await self._wait(job_id, min(request.wait, self.settings.explain_max_wait))
            if state.status == "succeeded":
                return ticket, job_answer(state.result)
            if state.status == "failed":
                raise ExplainerError(f"explanation job {job_id} failed: {state.error}")
        return ticket, None

    async def _wait(self, job_id: str, timeout: float) -> JobStatus:
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

    async def view(self, job_id: str, reader: Principal | None = None) -> JobView:
        """The job as ``reader`` may see it: someone else's job is as unknown as a job
        that does not exist (the same 404), so ids tell nothing."""
        state = await anyio.to_thread.run_sync(self.queue.status, job_id)
        if not may_read(state, reader):
            raise JobNotFound(f"job {job_id!r} not found (unknown, or its result expired)")
        if state.status == "succeeded":
            return JobView(job_id, state.status, result=job_answer(state.result))
        if state.status == "failed":
            return JobView(job_id, state.status, error=state.error or "")
        return JobView(job_id, state.status)

    async def stats(self) -> dict[str, Any]:
        stats = await anyio.to_thread.run_sync(self.cache.stats)
        return {**stats.to_dict(), "job_queue": self.queue.backend}

    def close(self) -> None:
        self.queue.close()
        self.cache.close()
