"""Predict and explain for every front-end: REST v1, the V2 protocol, the CLI, jobs."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from xserve.errors import ExplainerError, ModelNotReady, NotExplainable
from xserve.explainers.base import Attribution
from xserve.explainers.reasons import DEFAULT_REASONS, class_index, render
from xserve.monitoring.drift import NOT_TRAFFIC, DriftMonitor
from xserve.monitoring.metrics import note_model, observe_explanation
from xserve.repository.repository import ModelRepository
from xserve.repository.version import ModelVersion
from xserve.runtimes.base import Matrix
from xserve.serving.batching import MicroBatcher
from xserve.serving.decision import Decision, new_request_id
from xserve.serving.inputs import to_matrix
from xserve.serving.shadow import ShadowRunner
from xserve.settings import Settings

__all__ = ["Answer", "DataPlane", "Decided", "DecisionLog", "Prediction", "score"]


class DecisionLog(Protocol):
    """Where every decision is recorded before it is answered (the audit log)."""

    async def record(self, decision: Decision) -> None:
        """Return only once the record is durable; raise to refuse the decision."""

    def commit(self, decisions: Sequence[Decision]) -> Sequence[Exception | None]:
        """Blocking, off the event loop: record ``decisions`` together, durably; for each,
        the error that refuses it, or None."""


@dataclass
class Prediction:
    """Model outputs for a batch (and attributions when asked), labelled the same way for
    every flavor."""

    model: ModelVersion
    outputs: Matrix
    """Probabilities (n, classes) for classifiers, values (n,) for regressors."""
    attribution: Attribution | None = None

    def rows(self, part: slice) -> Prediction:
        a = self.attribution
        if a is not None:
            a = Attribution(a.method, a.output, a.values[part], a.base[part])
        return Prediction(self.model, self.outputs[part], a)

    @property
    def labels(self) -> list[Any]:
        if self.model.task == "regression":
            return self.outputs.tolist()  # type: ignore[no-any-return]
        classes = self.model.classes
        idx = np.argmax(self.outputs, axis=1).tolist()
        return [classes[i] for i in idx] if classes else idx

    def explained_outputs(self, label: str | None) -> list[int]:
        """The output each row's explanation reports: ``?class=`` or the predicted class."""
        chosen = class_index(self.model, label)
        if self.model.task == "regression":
            return [0] * len(self.outputs)
        if chosen is not None:
            return [chosen] * len(self.outputs)
        return np.argmax(self.outputs, axis=1).tolist()  # type: ignore[no-any-return]

    def to_dict(self, label: str | None = None, reasons: int = DEFAULT_REASONS) -> dict[str, Any]:
        out: dict[str, Any] = {"predictions": self.labels}
        if self.model.task == "classification":
            out["probabilities"] = self.outputs.tolist()
        if self.attribution is not None:
            out["explanations"] = [
                render(self.model, self.attribution, i, k, reasons)
                for i, k in enumerate(self.explained_outputs(label))
            ]
        return out


@dataclass(frozen=True)
class Decided:
    """A request scored and recorded: what its caller is answered, and the decision."""

    prediction: Prediction
    answer: dict[str, Any]
    decision: Decision


Answer = Callable[[Prediction], dict[str, Any]]
"""Builds a request's answer from its prediction (in the model's worker thread)."""


def score(model: ModelVersion, x: Matrix, explain: bool = False) -> Prediction:
    """Predict (and explain) a batch; blocking, so callers run it off the event loop."""
    if not explain:
        return Prediction(model, model.runtime.predict(x))
    if model.inline is None:
        raise NotExplainable(f"model {model.name!r} version {model.version}: {model.inline_error}")
    started = time.perf_counter()
    try:
        attribution = model.inline.explain(x)
    except Exception as exc:
        raise ExplainerError(
            f"{model.inline.method} explainer of {model.name!r} version {model.version} "
            f"failed: {type(exc).__name__}: {exc}"
        ) from exc
    observe_explanation(model.inline.method, time.perf_counter() - started, len(x))
    return Prediction(model, model.runtime.predict(x), attribution)


class DataPlane:
    def __init__(
        self, repository: ModelRepository, settings: Settings, decisions: DecisionLog | None = None
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.decisions = decisions
        self.drift = DriftMonitor(settings.drift_window)
        self.shadows = ShadowRunner(self, settings.shadow_max_pending)
        # One batcher per (version, explain); dropped with the version.
        self._batchers: weakref.WeakKeyDictionary[
            ModelVersion, dict[bool, MicroBatcher[Prediction]]
        ]
        self._batchers = weakref.WeakKeyDictionary()

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

    def matrix(self, model: ModelVersion, instances: Any) -> Matrix:
        return to_matrix(instances, model.features, self.settings.max_instances)

    def _batcher(self, model: ModelVersion, explain: bool) -> MicroBatcher[Prediction]:
        if explain and model.inline is None:
            raise NotExplainable(
                f"model {model.name!r} version {model.version}: {model.inline_error}"
            )
        per_model = self._batchers.setdefault(model, {})
        batcher = per_model.get(explain)
        if batcher is None:
            # Only a weak reference: the batcher is the WeakKeyDictionary's value, and a
            # strong one to its key would keep an unloaded version alive for ever.
            ref = weakref.ref(model)

            def run(x: Matrix) -> Prediction:
                version = ref()
                if version is None:  # unreachable while a caller awaits with the version
                    raise ModelNotReady(f"model {name!r} version {number} was unloaded")
                return score(version, x, explain)

            name, number = model.name, model.version
            batcher = MicroBatcher(
                run,
                Prediction.rows,
                max_rows=self.settings.batch_max_size,
                max_wait=self.settings.batch_max_wait_ms / 1000,
                seal=self._seal,
            )
            per_model[explain] = batcher
        return batcher

    async def score(self, model: ModelVersion, x: Matrix, explain: bool = False) -> Prediction:
        return await self._batcher(model, explain).submit(x)

    async def decide(
        self,
        kind: str,
        model: ModelVersion,
        x: Matrix,
        explain: bool,
        answer: Answer,
        request_id: str,
        caller: str | None,
    ) -> Decided:
        """Score ``x``, build its answer and record the decision, all in the model's worker
        thread (the record committed with the rest of its micro-batch's); return once the
        record is durable. Raises, unanswered, when the decision log refuses it."""

        def finish(prediction: Prediction) -> Decided:
            out = answer(prediction)
            return Decided(prediction, out, Decision(kind, model, request_id, caller, x, out))

        decided = await self._batcher(model, explain).submit(x, finish)
        self._observe(decided.decision)
        return decided

    def _seal(self, outputs: Sequence[object]) -> Sequence[BaseException | None]:
        """In the worker thread, after a micro-batch: commit its decisions together."""
        errors: list[BaseException | None] = [None] * len(outputs)
        if self.decisions is None:
            return errors
        mine = [(i, out.decision) for i, out in enumerate(outputs) if isinstance(out, Decided)]
        refusals = self.decisions.commit([decision for _, decision in mine])
        for (i, _), error in zip(mine, refusals, strict=True):
            errors[i] = error
        return errors

    async def predict(
        self,
        name: str,
        version: str | None,
        payload: dict[str, Any],
        explain: bool = False,
        label: str | None = None,
        reasons: int = DEFAULT_REASONS,
        caller: str | None = None,
        subject: str | None = None,
    ) -> dict[str, Any]:
        """The v1 predict answer for ``payload`` (``{"instances": [...], "id"?}``); without
        a ``version``, the traffic policy chooses (and its shadow gets a copy)."""
        model = self.route(name, version, subject)
        x = self.matrix(model, payload.get("instances"))
        class_index(model, label)  # a bad ?class= is the caller's mistake: say so before work
        request_id = new_request_id()

        def answer(prediction: Prediction) -> dict[str, Any]:
            out: dict[str, Any] = {
                "model": model.name,
                "version": model.version,
                "request_id": request_id,
            }
            if "id" in payload:
                out["id"] = payload["id"]
            out.update(prediction.to_dict(label, reasons))
            return out

        decided = await self.decide("predict", model, x, explain, answer, request_id, caller)
        if version is None:
            self.shadows.offer(
                model, x, decided.answer["predictions"], request_id, caller, explain, label, reasons
            )
        return decided.answer

    async def record(self, decision: Decision) -> None:
        """Record a decision before it is answered (no-op without a decision log)."""
        self._observe(decision)
        if self.decisions is not None:
            await self.decisions.record(decision)

    def _observe(self, decision: Decision) -> None:
        if decision.kind not in NOT_TRAFFIC:  # every scored batch, any front-end: O(1) append
            self.drift.observe(decision.model, decision.inputs)
