"""KernelSHAP: shap's ``KernelExplainer`` over the version's background, for any model.

It explains the model's own outputs (class probabilities, or the regression
value) through the identity link, so ``base_value + sum(values)`` equals the
output exactly: KernelSHAP solves its regression under that very constraint.
The background is summarised to ``background`` rows by k-means (weighted
centres, shap's recommendation) or by sampling, since the cost grows with it.
The row's coalitions are sampled with numpy's global generator, seeded per
row, so a row's explanation never depends on the rows explained before it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from xserve.explainers.base import Attribution, OutputSpace
from xserve.explainers.methods import (
    JobExplainer,
    MethodParams,
    Record,
    Row,
    explained_output,
)
from xserve.explainers.reasons import render
from xserve.serving.outcome import Explanation

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = ["KernelShap", "KernelShapParams", "summarize_background"]

_L1 = re.compile(r"^(off|aic|bic|num_features\((\d+)\))$")


class KernelShapParams(MethodParams):
    nsamples: Annotated[int, Field(ge=10, le=200_000)] | Literal["auto"] = "auto"
    """Coalitions evaluated per row; "auto" is shap's 2 * features + 2048."""
    background: int = Field(default=50, ge=1, le=1000)
    """Background rows after summarising (all rows when the sample is smaller)."""
    summarize: Literal["kmeans", "sample"] = "kmeans"
    l1_reg: str = "off"
    """Feature selection before the fit: "off" (every feature gets a value), "aic", "bic"
    or "num_features(k)"; shap's own default would keep only 10 features."""
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    @field_validator("l1_reg")
    @classmethod
    def _known_l1(cls, value: str) -> str:
        if not _L1.match(value):
            raise ValueError('expected "off", "aic", "bic" or "num_features(k)"')
        return value


def summarize_background(background: Any, params: KernelShapParams) -> Any:
    """The background shap's KernelExplainer is given: the rows, or a weighted summary."""
    import shap

    k = params.background
    if k >= len(background):
        return background
    if params.summarize == "kmeans":
        return shap.kmeans(background, k)
    return shap.sample(background, k, random_state=params.seed)


def l1_argument(params: KernelShapParams) -> str | bool:
    return False if params.l1_reg == "off" else params.l1_reg


class KernelShap(JobExplainer):
    method = "kernel_shap"
    Params = KernelShapParams

    def __init__(self, model: ModelVersion, params: MethodParams) -> None:
        import shap

        assert isinstance(params, KernelShapParams) and model.background is not None
        self.params = params
        self.predict = model.runtime.predict
        self.output: OutputSpace = "value" if model.task == "regression" else "probability"
        data = summarize_background(model.background, params)
        self.explainer = shap.KernelExplainer(self.predict, data)

    def explain_row(self, row: Row) -> Record:
        x = np.asarray(row, dtype=np.float64)[None, :]
        outputs = np.asarray(self.predict(x), dtype=np.float64).reshape(-1)
        np.random.seed(self.params.seed)
        raw = self.explainer.shap_values(
            x, nsamples=self.params.nsamples, l1_reg=l1_argument(self.params), silent=True
        )
        values = np.asarray(raw, dtype=np.float64).reshape(x.shape[1], -1)  # (features, outputs)
        base = np.atleast_1d(np.asarray(self.explainer.expected_value, dtype=np.float64))
        return {
            "output": self.output,
            "outputs": outputs.tolist(),
            "base": base.tolist(),
            "values": values.tolist(),
        }

    @classmethod
    def render(
        cls, model: ModelVersion, record: Record, label: str | None, reasons: int
    ) -> Explanation:
        values = np.asarray(record["values"], dtype=np.float64)[None, :, :]
        base = np.asarray(record["base"], dtype=np.float64)[None, :]
        attribution = Attribution(cls.method, record["output"], values, base)
        output = explained_output(model, record["outputs"], label)
        return render(model, attribution, 0, output, reasons)
