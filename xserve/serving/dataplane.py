"""The one decision path: every front-end (REST v1, V2, the CLI's server calls) hands
:meth:`DataPlane.decide` a :class:`DecisionRequest` and gets a typed :class:`Outcome`.

A scored decision's answer is built and its record committed in the model's worker
thread, with the rest of its micro-batch's; answers that need no model call (cached
explanations) are committed through the same ``DecisionLog.commit``.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio.to_thread
import numpy as np

from xserve.errors import InvalidInput, ModelNotReady, NotExplainable
from xserve.explainers.describe import describe_version, no_inline_message
from xserve.explainers.reasons import class_index
from xserve.monitoring.drift import NOT_TRAFFIC, DriftMonitor
from xserve.monitoring.metrics import note_model
from xserve.repository.repository import ModelRepository
from xserve.repository.version import ModelVersion
from xserve.runtimes.base import Matrix
from xserve.security.keys import Principal
from xserve.serving.batching import MicroBatcher
from xserve.serving.decision import Decision, DecisionLog, commit_one, new_request_id
from xserve.serving.envelope import envelope
from xserve.serving.explain import INLINE_METHODS, ExplainJobs, resolve_method
from xserve.serving.inputs import to_matrix
from xserve.serving.outcome import Answer, JobTicket, JobView
from xserve.serving.prediction import Prediction, score
from xserve.serving.request import DecisionRequest
from xserve.serving.shadow import ShadowRunner
from xserve.settings import Settings
from xserve.tracing import attached, current, span

__all__ = ["DataPlane", "Outcome"]


@dataclass(frozen=True)
class Outcome:
    """What a request came to: its answer (None while a job computes it), the prediction
    it was made from when the model ran, or the job to poll."""

    model: ModelVersion
    answer: Answer | None = None
    prediction: Prediction | None = None
    job: JobTicket | None = None
    decision: Decision | None = None
    """What was recorded for ``answer``."""
    trace: Any = None
    """The request's trace context (tracing on), for the spans of its batch's thread."""

    def answered(self) -> Answer:
        """The answer of a request that is answered at once (predict, infer)."""
        if self.answer is None:
            raise RuntimeError("this request was not answered at once: a job computes it")
        return self.answer


def _check_finite(model: ModelVersion, prediction: Prediction) -> None:
    """An output (or attribution) that is not finite is refused, never answered as null or
    Infinity."""
    a = prediction.attribution
    parts = [prediction.outputs] if a is None else [prediction.outputs, a.values, a.base]
    if not all(np.isfinite(part).all() for part in parts):
        raise InvalidInput(
            f"model {model.name!r} version {model.version}: these inputs give a non-finite "
            "output (they are too large for the model's arithmetic)"
        )


def _decided(
    model: ModelVersion, x: Matrix, request: DecisionRequest, request_id: str, answer: Answer
) -> Decision:
    return Decision(request.kind, model, request_id, request.caller, x, answer)


class DataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        settings: Settings,
        decisions: DecisionLog | None = None,
        jobs: ExplainJobs | None = None,
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.decisions = decisions
        self.jobs = jobs
        self.drift = DriftMonitor(settings.drift_window)
        self.shadows = ShadowRunner(self._decide_on, repository.shadow, settings.shadow_max_pending)
        # One batcher per (version, explain); dropped with the version.
        self._batchers: weakref.WeakKeyDictionary[
            ModelVersion, dict[bool, MicroBatcher[Prediction]]
        ]
        self._batchers = weakref.WeakKeyDictionary()

    # -- the decision path -------------------------------------------------------------

    async def decide(self, request: DecisionRequest) -> Outcome:
        """Route, check, score (or explain) and record ``request``; return once its record
        is durable. Raises, unanswered and unrecorded, on the caller's mistakes, and
        unanswered when the decision log refuses the record."""
        model = self.route(request.model, request.version, request.subject)
        x = to_matrix(request.raw_rows(model), model.features, self.settings.max_instances)
        class_index(model, request.label)  # a bad ?class= is the caller's mistake: say so first
        if request.kind == "explain":
            return await self._explain(model, x, request)
        request_id = new_request_id()
        outcome = await self._decide_on(model, x, request, request_id)
        if request.version is None:  # live traffic: the shadow version gets a copy
            predictions = outcome.answered().predictions
            self.shadows.offer(model, x, request, predictions or [], request_id)
        return outcome

    async def _decide_on(
        self, model: ModelVersion, x: Matrix, request: DecisionRequest, request_id: str
    ) -> Outcome:
        """Score ``x``, build its answer and its decision in the model's worker thread; the
        record is committed with the rest of the micro-batch's."""

        def finish(prediction: Prediction) -> Outcome:
            _check_finite(model, prediction)
            if request.kind == "explain":
                body: dict[str, Any] = {
                    "method": prediction.attribution.method if prediction.attribution else None,
                    "explanations": prediction.explanations(request.label, request.reasons),
                    "cached": [False] * len(x),
                }
            else:
                body = prediction.body(request.label, request.reasons)
            answer = envelope(model, request_id, request.client_id, **body)
            decision = _decided(model, x, request, request_id, answer)
            return Outcome(model, answer, prediction, decision=decision, trace=trace)

        explain = request.explain or request.kind == "explain"
        # Timed here, on the loop: the batch's thread gets the context from the Outcome.
        where = {"xserve.model": model.name, "xserve.version": model.version, "xserve.rows": len(x)}
        with span("xserve.model", where):
            trace = current()
            outcome = await self._batcher(model, explain).submit(x, finish)
        self._observe(outcome.decision)
        return outcome

    async def _explain(self, model: ModelVersion, x: Matrix, request: DecisionRequest) -> Outcome:
        method, params, label = resolve_method(model, request)
        class_index(model, label)  # `params.class` too: the caller's mistake, said before work
        request = replace(request, method=method, params=params, label=label)
        if method in INLINE_METHODS:
            inline = model.inline
            if inline is None or inline.method != method:
                why = (
                    model.inline_error if inline is None else f"its exact method is {inline.method}"
                )
                raise NotExplainable(
                    f"model {model.name!r} version {model.version}: no {method}: {why}"
                )
            if params:
                raise InvalidInput(f"params: {method} takes none, got {sorted(params)}")
            return await self._decide_on(model, x, request, new_request_id())
        jobs = self._jobs()
        plan = jobs.plan(model, request)
        found = await anyio.to_thread.run_sync(jobs.cached, model, plan, x, request)
        if found is not None:
            request_id = new_request_id()
            answer = envelope(
                model,
                request_id,
                request.client_id,
                method=plan.method,
                explanations=found,
                cached=[True] * len(found),
            )
            decision = _decided(model, x, request, request_id, answer)
            await anyio.to_thread.run_sync(commit_one, self.decisions, decision)
            return Outcome(model, answer, decision=decision)
        ticket, result = await jobs.submit(model, x, request)
        if result is not None:  # finished within ?wait=: recorded by its worker already
            return Outcome(model, result)
        return Outcome(model, job=ticket)

    def _seal(self, outputs: Sequence[object]) -> Sequence[BaseException | None]:
        """In the worker thread, after a micro-batch: commit its decisions together."""
        errors: list[BaseException | None] = [None] * len(outputs)
        if self.decisions is None:
            return errors
        mine = [
            (i, out.decision)
            for i, out in enumerate(outputs)
            if isinstance(out, Outcome) and out.decision is not None
        ]
        # The batch's thread runs without a request's context: the commit's span is put in
        # the first traced request's trace (a group commit serves several).
        traced = (
            out.trace for out in outputs if isinstance(out, Outcome) and out.trace is not None
        )
        with attached(next(traced, None)):
            refusals = self.decisions.commit([decision for _, decision in mine])
        for (i, _), error in zip(mine, refusals, strict=True):
            errors[i] = error
        return errors

    def _observe(self, decision: Decision | None) -> None:
        if decision is not None and decision.kind not in NOT_TRAFFIC:
            self.drift.observe(decision.model, decision.inputs)  # O(1) append

    def _batcher(self, model: ModelVersion, explain: bool) -> MicroBatcher[Prediction]:
        if explain and model.inline is None:
            raise NotExplainable(no_inline_message(model))
        per_model = self._batchers.setdefault(model, {})
        batcher = per_model.get(explain)
        if batcher is None:
            # Only a weak reference: the batcher is the WeakKeyDictionary's value, and a
            # strong one to its key would keep an unloaded version alive for ever.
            ref = weakref.ref(model)
            name, number = model.name, model.version

            def run(x: Matrix) -> Prediction:
                version = ref()
                if version is None:  # unreachable while a caller awaits with the version
                    raise ModelNotReady(f"model {name!r} version {number} was unloaded")
                return score(version, x, explain)

            batcher = MicroBatcher(
                run,
                Prediction.rows,
                max_rows=self.settings.batch_max_size,
                max_wait=self.settings.batch_max_wait_ms / 1000,
                seal=self._seal,
            )
            per_model[explain] = batcher
        return batcher

    # -- lookups for the front-ends ----------------------------------------------------

    def model(self, name: str, version: str | None = None) -> ModelVersion:
        return self.repository.get(name, version)

    def route(
        self, name: str, version: str | None = None, subject: str | None = None
    ) -> ModelVersion:
        """The version that answers a request: the one named, else the traffic policy's
        choice (sticky per ``subject`` in a split). Noted for the request's metrics."""
        if version is None:
            model = self.repository.route(name, subject)
        else:
            model = self.repository.get(name, version)
        note_model(model.name, model.version)
        return model

    @property
    def ready(self) -> bool:
        """Whether the first repository scan has loaded or failed every version found."""
        return self.repository.scanned

    def models(self) -> list[dict[str, Any]]:
        """Every model, its versions, their state, flavor and error."""
        return self.repository.describe()

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """A version's metadata; without ``version``, the serving one's with every version's
        state and the traffic policy."""
        model = self.model(name, version)
        out = describe_version(model)
        if version is None:
            out["versions"] = [e.describe() for e in self.repository.versions(name)]
            out["serving_version"] = model.version
            out["traffic"] = self.repository.traffic(name)
        return out

    def ready_versions(self, name: str) -> list[str]:
        return [e.version for e in self.repository.versions(name) if e.model is not None]

    def drift_report(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Blocking (statistics computed on read): the version's live drift."""
        return self.drift.report(self.model(name, version))

    def _jobs(self) -> ExplainJobs:
        if self.jobs is None:
            raise NotExplainable("explanation jobs are not available in this process")
        return self.jobs

    async def cache_stats(self) -> dict[str, Any]:
        return await self._jobs().stats()

    async def job(self, job_id: str, reader: Principal | None = None) -> JobView:
        """An explanation job's state, if ``reader`` may read it (its submitter, or the
        audit or admin role; anyone without keys), else JobNotFound; a finished job's
        answer was recorded when it finished, so reading it records nothing."""
        return await self._jobs().view(job_id, reader)
