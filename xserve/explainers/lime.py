"""LIME: lime's tabular explainer over the version's background, for any model.

Each output (class) gets its own local linear fit, and lime reports the fit's
``score`` only for the last one it fits, so every output is explained by its
own call on the same seeded neighbourhood. A fresh explainer per call makes
a row's answer depend on nothing but the row and the parameters (lime's
random state is shared by its sampler and its discretizer).

``values`` are the local model's weights, one per feature (with the default
discretisation each feature's condition holds for the row, so ``intercept +
sum(values)`` is lime's local prediction, not the model's output: LIME is not
additive). ``conditions`` gives each feature's condition, e.g. ``debt_to_income > 0.45``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from xserve.explainers.methods import (
    JobExplainer,
    MethodParams,
    Record,
    Row,
    explained_output,
)
from xserve.explainers.reasons import adverse_index, reason_codes
from xserve.serving.outcome import Explanation

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = ["Lime", "LimeParams"]


class LimeParams(MethodParams):
    num_samples: int = Field(default=5000, ge=100, le=100_000)
    """Perturbed samples around the row."""
    discretize_continuous: bool = True
    kernel_width: float | None = Field(default=None, gt=0)
    """Width of the proximity kernel; default 0.75 * sqrt(features), lime's."""
    seed: int = Field(default=0, ge=0, le=2**32 - 1)


class Lime(JobExplainer):
    method = "lime"
    Params = LimeParams

    def __init__(self, model: ModelVersion, params: MethodParams) -> None:
        assert isinstance(params, LimeParams) and model.background is not None
        self.params = params
        self.background = model.background
        self.names = model.feature_names
        self.regression = model.task == "regression"
        self.predict = model.runtime.predict
        self.n_outputs = 1 if self.regression else len(model.classes or [])

    def _explainer(self) -> Any:
        from lime.lime_tabular import LimeTabularExplainer

        return LimeTabularExplainer(
            self.background,
            mode="regression" if self.regression else "classification",
            feature_names=self.names,
            discretize_continuous=self.params.discretize_continuous,
            kernel_width=self.params.kernel_width,
            random_state=self.params.seed,
        )

    def explain_row(self, row: Row) -> Record:
        x = np.asarray(row, dtype=np.float64)
        outputs = np.asarray(self.predict(x[None, :]), dtype=np.float64).reshape(-1)
        n = len(self.names)
        values = np.zeros((n, max(self.n_outputs, 1)))
        intercept, score = [], []
        conditions: list[str] = list(self.names)
        for k in range(values.shape[1]):
            exp = self._explainer().explain_instance(
                x, self.predict, labels=(k,), num_features=n, num_samples=self.params.num_samples
            )
            # lime files a regression's fit under label 1 (label 0 holds it negated).
            label = 1 if self.regression else k
            for i, w in exp.local_exp[label]:
                values[i, k] = w
            intercept.append(float(exp.intercept[label]))
            score.append(float(exp.score))
            named = exp.domain_mapper.discretized_feature_names
            if named is not None:
                conditions = list(named)
        return {
            "output": "value" if self.regression else "probability",
            "outputs": outputs.tolist(),
            "values": values.tolist(),
            "intercept": intercept,
            "score": score,
            "conditions": conditions,
        }

    @classmethod
    def render(
        cls, model: ModelVersion, record: Record, label: str | None, reasons: int
    ) -> Explanation:
        values = np.asarray(record["values"], dtype=np.float64)
        k = explained_output(model, record["outputs"], label)
        names = model.feature_names
        return Explanation(
            cls.method,
            model.classes[k] if model.classes else None,
            output=record["output"],
            intercept=record["intercept"][k],
            score=record["score"][k],
            values=dict(zip(names, values[:, k].tolist(), strict=True)),
            conditions=dict(zip(names, record["conditions"], strict=True)),
            reason_codes=reason_codes(model, values[:, adverse_index(model)], reasons),
        )
