"""Exact LinearSHAP (interventional) for linear and logistic models.

For a model linear in its inputs, f(x) = w·x + b, the interventional SHAP
value of feature i against a background with mean mu is w_i (x_i - mu_i), and
the base value is w·mu + b: exact, and what ``shap.LinearExplainer`` gives
with the same background. A leading ``StandardScaler`` in a pipeline is folded
into the weights, since the composition is still linear.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from xserve.explainers.base import Attribution, InlineExplainer, OutputSpace

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = ["LinearShap"]

Array = npt.NDArray[np.float64]


def _linear_parts(estimator: Any) -> tuple[Any, Array, Array] | None:
    """(final estimator, weights (outputs, features), intercepts (outputs,)) in input space."""
    scale: Array | None = None
    shift: Array | None = None
    steps = getattr(estimator, "steps", None)
    if steps is not None:
        transforms, (_, estimator) = [s for _, s in steps[:-1]], steps[-1]
        if len(transforms) > 1 or (transforms and type(transforms[0]).__name__ != "StandardScaler"):
            return None
        if transforms:
            sc = transforms[0]
            scale = np.asarray(sc.scale_, dtype=np.float64) if sc.scale_ is not None else None
            # mean_ is also fitted under with_mean=False (for the variance), but not subtracted.
            if sc.with_mean and sc.mean_ is not None:
                shift = np.asarray(sc.mean_, dtype=np.float64)
    coef = getattr(estimator, "coef_", None)
    intercept = getattr(estimator, "intercept_", None)
    if coef is None or intercept is None or "Tree" in type(estimator).__name__:
        return None
    w = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    b = np.atleast_1d(np.asarray(intercept, dtype=np.float64)) * np.ones(w.shape[0])
    if scale is not None:  # w·((x - m) / s) + b = (w/s)·x + (b - (w/s)·m)
        w = w / scale
    if shift is not None:
        b = b - w @ shift
    return estimator, w, b


class LinearShap(InlineExplainer):
    method = "linear_shap"

    @classmethod
    def supports(cls, model: ModelVersion) -> bool:
        return (
            model.flavor == "sklearn"
            and model.background is not None
            and _linear_parts(model.runtime.native) is not None
        )

    def __init__(self, model: ModelVersion) -> None:
        parts = _linear_parts(model.runtime.native)
        if parts is None or model.background is None:
            raise ValueError("linear_shap needs a linear model and a background sample")
        self.pipeline = model.runtime.native
        _, self.weights, intercept = parts
        self.mean = model.background.mean(axis=0)
        self.base_values = self.weights @ self.mean + intercept
        self.binary = model.task == "classification" and self.weights.shape[0] == 1
        self.output: OutputSpace = "margin" if model.task == "classification" else "value"

    def explain(self, x: Array) -> Attribution:
        values = (x - self.mean)[:, :, None] * self.weights.T[None, :, :]
        base = np.tile(self.base_values, (len(x), 1))
        if self.binary:
            values = np.concatenate([-values, values], axis=2)
            base = np.concatenate([-base, base], axis=1)
        return Attribution(self.method, self.output, values, base)

    def model_output(self, x: Array) -> Array:
        if self.output == "value":
            return np.asarray(self.pipeline.predict(x), dtype=np.float64).reshape(len(x), -1)
        margin = np.asarray(self.pipeline.decision_function(x), dtype=np.float64)
        return margin if margin.ndim == 2 else np.column_stack([-margin, margin])
