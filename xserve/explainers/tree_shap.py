"""Exact TreeSHAP (path-dependent) for XGBoost boosters and scikit-learn tree ensembles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from xserve.explainers.base import (
    Attribution,
    InlineExplainer,
    OutputSpace,
    binary_margin,
    register_inline,
)

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = ["SklearnTreeShap", "XGBoostTreeShap"]

Array = npt.NDArray[np.float64]

# XGBoost regression objectives whose margin is the prediction itself.
_IDENTITY_OBJECTIVES = {
    "reg:squarederror",
    "reg:squaredlogerror",
    "reg:pseudohubererror",
    "reg:absoluteerror",
    "reg:quantileerror",
    "reg:linear",
}


@register_inline
class XGBoostTreeShap(InlineExplainer):
    """XGBoost's own C++ TreeSHAP (``pred_contribs``), the same call shap makes for boosters."""

    method = "tree_shap"

    @classmethod
    def supports(cls, model: ModelVersion) -> bool:
        if model.flavor != "xgboost":
            return False
        config = model.runtime.native.save_config()
        return '"booster":"gbtree"' in config or '"booster":"dart"' in config

    def __init__(self, model: ModelVersion) -> None:
        self.booster: xgb.Booster = model.runtime.native
        self.task = model.task
        self.n_classes = len(model.classes or [])
        # pred_contribs add up to the margin; for a regressor that is its predicted value
        # only under an identity link (not count:poisson, reg:gamma, reg:logistic...).
        identity = getattr(model.runtime, "objective", None) in _IDENTITY_OBJECTIVES
        self.output: OutputSpace = "value" if model.task == "regression" and identity else "margin"

    def _shape(self, raw: Array) -> tuple[Array, Array]:
        if raw.ndim == 3:  # multiclass: (rows, classes, features + 1)
            return raw[:, :, :-1].transpose(0, 2, 1), raw[:, :, -1]
        values, base = raw[:, :-1], raw[:, -1]
        if self.task == "classification":
            return binary_margin(values, base)
        return values[:, :, None], base[:, None]

    def explain(self, x: Array) -> Attribution:
        raw = self.booster.predict(xgb.DMatrix(x), pred_contribs=True, validate_features=False)
        values, base = self._shape(np.asarray(raw, dtype=np.float64))
        return Attribution(self.method, self.output, values, base)

    def model_output(self, x: Array) -> Array:
        margin = np.asarray(
            self.booster.inplace_predict(x, predict_type="margin", validate_features=False),
            dtype=np.float64,
        )
        if margin.ndim == 2:
            return margin
        return (
            np.column_stack([-margin, margin]) if self.task == "classification" else margin[:, None]
        )


# shap's name for the space its tree outputs live in, and ours.
_SPACES: dict[str, OutputSpace] = {
    "probability": "probability",
    "log_odds": "margin",
    "raw_value": "value",
}


@register_inline
class SklearnTreeShap(InlineExplainer):
    """shap's TreeExplainer on scikit-learn tree ensembles (random forest, extra trees,
    gradient boosting, histogram gradient boosting, single trees)."""

    method = "tree_shap"

    @classmethod
    def supports(cls, model: ModelVersion) -> bool:
        if model.flavor != "sklearn":
            return False
        estimator = model.runtime.native
        name = type(estimator).__name__
        return any(k in name for k in ("Forest", "Trees", "GradientBoosting", "DecisionTree"))

    def __init__(self, model: ModelVersion) -> None:
        import shap

        self.estimator: Any = model.runtime.native
        self.task = model.task
        self.explainer = shap.TreeExplainer(self.estimator)
        space = _SPACES.get(self.explainer.model.tree_output)
        if space is None:
            raise ValueError(f"unsupported tree output {self.explainer.model.tree_output!r}")
        self.output = "value" if model.task == "regression" else space

    def explain(self, x: Array) -> Attribution:
        raw = np.asarray(self.explainer.shap_values(x, check_additivity=False), dtype=np.float64)
        expected = np.atleast_1d(np.asarray(self.explainer.expected_value, dtype=np.float64))
        n = len(x)
        if raw.ndim == 3:
            return Attribution(self.method, self.output, raw, np.tile(expected, (n, 1)))
        base = np.full(n, expected[0])
        if self.task == "classification":  # a single log-odds output
            values, base2 = binary_margin(raw, base)
            return Attribution(self.method, self.output, values, base2)
        return Attribution(self.method, self.output, raw[:, :, None], base[:, None])

    def model_output(self, x: Array) -> Array:
        if self.output == "probability":
            return np.asarray(self.estimator.predict_proba(x), dtype=np.float64)
        if self.output == "margin":
            margin = np.asarray(self.estimator.decision_function(x), dtype=np.float64)
            return margin if margin.ndim == 2 else np.column_stack([-margin, margin])
        return np.asarray(self.estimator.predict(x), dtype=np.float64).reshape(len(x), 1)
