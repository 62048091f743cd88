"""Exact TreeSHAP (path-dependent) for XGBoost boosters and scikit-learn tree ensembles."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from xserve.explainers.base import (
    Attribution,
    InlineExplainer,
    OutputSpace,
    binary_margin,
)
from xserve.explainers.leaf_tables import LeafTables, Tree, TreeEnsemble, join

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = ["SklearnTreeShap", "XGBoostTreeShap"]

Array = npt.NDArray[np.float64]
log = logging.getLogger(__name__)

# XGBoost regression objectives whose margin is the prediction itself.
_IDENTITY_OBJECTIVES = {
    "reg:squarederror",
    "reg:squaredlogerror",
    "reg:pseudohubererror",
    "reg:absoluteerror",
    "reg:quantileerror",
    "reg:linear",
}


def xgboost_ensemble(booster: xgb.Booster) -> TreeEnsemble:
    """The trees of a ``gbtree`` booster, from its JSON model (floats round-trip exactly)."""
    learner = json.loads(booster.save_raw("json"))["learner"]
    gbm = learner["gradient_booster"]
    if gbm["name"] != "gbtree":
        raise ValueError(f"booster {gbm['name']!r} (only gbtree is tabulated)")
    params = learner["learner_model_param"]
    if int(params.get("num_target", "1")) > 1:
        raise ValueError("multi-target trees")
    trees = []
    for tree, output in zip(gbm["model"]["trees"], gbm["model"]["tree_info"], strict=True):
        if any(tree["split_type"]):
            raise ValueError("categorical splits")
        # A leaf's split_condition holds its value.
        values = np.asarray(tree["split_conditions"], dtype=np.float32)
        trees.append(
            Tree(
                left=np.asarray(tree["left_children"], dtype=np.int64),
                right=np.asarray(tree["right_children"], dtype=np.int64),
                feature=np.asarray(tree["split_indices"], dtype=np.int64),
                threshold=values,
                default_left=np.asarray(tree["default_left"], dtype=np.bool_),
                cover=tree["sum_hessian"],
                value=values,
                output=output,
            )
        )
    return join(trees, booster.num_features(), max(int(params.get("num_class", "0")), 1))


def tabulated(
    build: Callable[[], TreeEnsemble], model: ModelVersion, instead: str
) -> LeafTables | None:
    """The version's leaf tables, or None (logged) when its trees cannot be tabulated."""
    try:
        return LeafTables(build())
    except ValueError as exc:  # unsupported trees or too large: the recursive algorithm
        log.info("TreeSHAP of %s v%s by %s: %s", model.name, model.version, instead, exc)
        return None


class XGBoostTreeShap(InlineExplainer):
    """Exact path-dependent TreeSHAP of a booster: the values of XGBoost's ``pred_contribs``
    (what shap returns for boosters), from per-leaf tables (``leaf_tables``) when the trees
    allow, else from ``pred_contribs`` itself."""

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
        self.tables = tabulated(lambda: xgboost_ensemble(self.booster), model, "pred_contribs")
        if self.tables is None:
            return
        # The base value is XGBoost's own (base_score in margin space plus each tree's
        # cover-weighted mean), so it is exactly the one shap and pred_contribs report.
        probe = np.zeros((1, self.booster.num_features()))
        raw = np.asarray(self._contribs(probe), dtype=np.float64)
        self.base_value = raw[0, :, -1] if raw.ndim == 3 else raw[0, -1:]

    def _contribs(self, x: Array) -> Any:
        return self.booster.predict(xgb.DMatrix(x), pred_contribs=True, validate_features=False)

    def _shape(self, values: Array, base: Array) -> tuple[Array, Array]:
        """(rows, features, outputs) and (rows, outputs) from per-output values and bases."""
        if values.shape[2] == 1 and self.task == "classification":
            return binary_margin(values[:, :, 0], base[:, 0])
        return values, base

    def explain(self, x: Array) -> Attribution:
        if self.tables is not None:
            values = self.tables.shap_values(x)
            base = np.tile(self.base_value, (len(x), 1))
        else:
            raw = np.asarray(self._contribs(x), dtype=np.float64)
            if raw.ndim == 3:  # multiclass: (rows, classes, features + 1)
                values, base = raw[:, :, :-1].transpose(0, 2, 1), raw[:, :, -1]
            else:
                values, base = raw[:, :-1, None], raw[:, -1:]
        values, base = self._shape(values, base)
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


def shap_ensemble(model: Any, n_features: int) -> TreeEnsemble:
    """The trees of a scikit-learn ensemble as shap reads them (values already scaled by
    the learning rate or the number of trees), one copy of a tree per output."""
    if model.input_dtype is not np.float32 or model.trees is None:
        raise ValueError("only float32 inputs are compared exactly")
    trees = model.trees[: model.tree_limit] if model.tree_limit else model.trees
    if any(np.any(t.threshold_types != 0) for t in trees if hasattr(t, "threshold_types")):
        raise ValueError("split types other than <=")
    n_outputs = int(trees[0].values.shape[1])
    tables = []
    for tree in trees:
        # x32 <= t64 exactly when x32 <= the largest float32 not above t64
        t32 = tree.thresholds.astype(np.float32)
        t32 = np.where(t32 > tree.thresholds, np.nextafter(t32, np.float32(-np.inf)), t32)
        for k in range(n_outputs):
            tables.append(
                Tree(
                    left=tree.children_left,
                    right=tree.children_right,
                    feature=tree.features,
                    threshold=t32,
                    default_left=tree.children_default == tree.children_left,
                    cover=tree.node_sample_weight,
                    value=tree.values[:, k],
                    output=k,
                )
            )
    return join(tables, n_features, n_outputs, left_if_equal=True)


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
        self.tables = tabulated(
            lambda: shap_ensemble(self.explainer.model, self.estimator.n_features_in_),
            model,
            "shap",
        )

    def explain(self, x: Array) -> Attribution:
        if self.tables is not None:
            raw = self.tables.shap_values(x)
            raw = raw if raw.shape[2] > 1 else raw[:, :, 0]
        else:
            raw = np.asarray(
                self.explainer.shap_values(x, check_additivity=False), dtype=np.float64
            )
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
