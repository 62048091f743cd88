"""Scoring a batch: the model's outputs (and attributions), labelled the same way for every
flavor and every front-end."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from xserve.errors import ExplainerError, NotExplainable
from xserve.explainers.base import Attribution
from xserve.explainers.describe import no_inline_message
from xserve.explainers.reasons import DEFAULT_REASONS, class_index, render
from xserve.monitoring.metrics import observe_explanation
from xserve.repository.version import ModelVersion
from xserve.runtimes.base import Matrix
from xserve.serving.outcome import Explanation

__all__ = ["Prediction", "score"]


@dataclass(frozen=True)
class Prediction:
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

    def explanations(
        self, label: str | None = None, reasons: int = DEFAULT_REASONS
    ) -> list[Explanation]:
        a = self.attribution
        if a is None:
            return []
        chosen = self.explained_outputs(label)
        return [render(self.model, a, i, k, reasons) for i, k in enumerate(chosen)]

    def body(self, label: str | None = None, reasons: int = DEFAULT_REASONS) -> dict[str, Any]:
        """The predict answer's fields: predictions, probabilities, explanations."""
        out: dict[str, Any] = {"predictions": self.labels}
        if self.model.task == "classification":
            out["probabilities"] = self.outputs.tolist()
        if self.attribution is not None:
            out["explanations"] = self.explanations(label, reasons)
        return out


def score(model: ModelVersion, x: Matrix, explain: bool = False) -> Prediction:
    """Predict (and explain) a batch; blocking, so callers run it off the event loop."""
    if not explain:
        return Prediction(model, model.runtime.predict(x))
    if model.inline is None:
        raise NotExplainable(no_inline_message(model))
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
