"""Exact TreeSHAP (path-dependent) for XGBoost boosters and scikit-learn tree ensembles."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import xgboost as xgb

from xserve.explainers.base import (
    Attribution,
    InlineExplainer,
    OutputSpace,
    binary_margin,
)
from xserve.explainers.leaf_tables import LeafTables, Tree, TreeEnsemble, join
from xserve.explainers.path_shap import TreeKernel, exact_kernel, expected_values, predict

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = [
    "SklearnTreeShap",
    "XGBoostTreeShap",
    "categorical_hist_boosting",
    "encode_categories",
    "encoded_order",
    "gradient_boosting_model",
    "hist_gradient_boosting_model",
    "per_class_boosting",
    "shap_ensemble",
    "xgboost_ensemble",
    "xgboost_model",
]

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


# How an objective turns base_score (stored as a prediction) into the margin it adds.
_LOGIT_BASE = {"binary:logistic", "reg:logistic"}
_LOG_BASE = {"count:poisson", "reg:gamma", "reg:tweedie", "survival:cox", "survival:aft"}


def _base_margin(learner: dict[str, Any]) -> npt.NDArray[np.float64]:
    """base_score in margin space, one per output (XGBoost keeps it as a float32)."""
    raw = str(learner["learner_model_param"]["base_score"]).strip("[]")
    score = np.asarray([float(v) for v in raw.split(",")], dtype=np.float32).astype(np.float64)
    objective = learner["objective"]["name"]
    if objective in _LOGIT_BASE:
        score = np.log(score / (1.0 - score))
    elif objective in _LOG_BASE:
        score = np.log(score)
    return np.asarray(score.astype(np.float32), dtype=np.float64)


def _xgboost_tree(tree: dict[str, Any], output: int, weight: float) -> Tree:
    left = np.asarray(tree["left_children"], dtype=np.int64)
    right = np.asarray(tree["right_children"], dtype=np.int64)
    default_left = np.asarray(tree["default_left"], dtype=np.bool_)
    # A leaf's split_condition holds its value (a dart tree's is scaled by its weight).
    conditions = np.asarray(tree["split_conditions"], dtype=np.float32)
    values = conditions.astype(np.float64) * weight if weight != 1.0 else conditions
    categories: list[list[int] | None] | None = None
    if any(tree["split_type"]):
        # XGBoost sends the listed categories right; the ensemble's rule sends a node's
        # categories left, so those nodes swap their children (and default direction).
        categories = [None] * len(left)
        segments = tree["categories_segments"]
        sizes = tree["categories_sizes"]
        for node, begin, size in zip(tree["categories_nodes"], segments, sizes, strict=True):
            categories[node] = [int(c) for c in tree["categories"][begin : begin + size]]
            left[node], right[node] = right[node], left[node]
            default_left[node] = not default_left[node]
        for node, kind in enumerate(tree["split_type"]):
            if kind and categories[node] is None:  # a split no category takes
                categories[node] = []
                left[node], right[node] = right[node], left[node]
                default_left[node] = not default_left[node]
    return Tree(
        left=left,
        right=right,
        feature=np.asarray(tree["split_indices"], dtype=np.int64),
        threshold=conditions,
        default_left=default_left,
        cover=tree["sum_hessian"],
        value=values,
        output=output,
        categories=categories,
    )


def xgboost_model(booster: xgb.Booster) -> tuple[TreeEnsemble, npt.NDArray[np.float64]]:
    """The trees of a ``gbtree`` or ``dart`` booster from its JSON model (floats round-trip
    exactly), and its base score in margin space per output."""
    learner = json.loads(booster.save_raw("json"))["learner"]
    gbm = learner["gradient_booster"]
    weights: list[float] | None = None
    if gbm["name"] == "dart":
        weights = [float(w) for w in gbm["weight_drop"]]
        gbm = gbm["gbtree"]
    if gbm["name"] != "gbtree":
        raise ValueError(f"booster {gbm['name']!r} has no trees")
    params = learner["learner_model_param"]
    if int(params.get("num_target", "1")) > 1:
        raise ValueError("multi-target trees")
    model = gbm["model"]
    trees = [
        _xgboost_tree(tree, output, 1.0 if weights is None else weights[i])
        for i, (tree, output) in enumerate(zip(model["trees"], model["tree_info"], strict=True))
    ]
    n_outputs = max(int(params.get("num_class", "0")), 1)
    base = _base_margin(learner)
    base = np.broadcast_to(base, (n_outputs,)) if base.size == 1 else base
    return join(trees, booster.num_features(), n_outputs), np.array(base, dtype=np.float64)


def xgboost_ensemble(booster: xgb.Booster) -> TreeEnsemble:
    """The trees of a ``gbtree`` or ``dart`` booster (see ``xgboost_model``)."""
    return xgboost_model(booster)[0]


def exact(ensemble: TreeEnsemble, model: ModelVersion) -> TreeKernel:
    """The leaf tables when they fit the trees, else the float64 recursive kernel (logged)."""
    kernel, why = exact_kernel(ensemble)
    if why is not None:
        log.info("TreeSHAP of %s v%s by the recursive kernel: %s", model.name, model.version, why)
    return kernel


class XGBoostTreeShap(InlineExplainer):
    """Exact path-dependent TreeSHAP of a ``gbtree`` or ``dart`` booster in float64: the
    values of XGBoost's ``pred_contribs`` (what shap returns for boosters), from per-leaf
    tables (``leaf_tables``) when the trees allow, else from the recursive kernel
    (``path_shap``: wide paths, large ensembles, dart weights, categorical splits)."""

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
        # The attributions add up to the margin; for a regressor that is its predicted value
        # only under an identity link (not count:poisson, reg:gamma, reg:logistic...).
        identity = getattr(model.runtime, "objective", None) in _IDENTITY_OBJECTIVES
        self.output: OutputSpace = "value" if model.task == "regression" and identity else "margin"
        ensemble, base_margin = xgboost_model(self.booster)
        self.kernel = exact(ensemble, model)
        self.tables = self.kernel if isinstance(self.kernel, LeafTables) else None
        # base_score in margin space plus each tree's cover-weighted mean, in float64:
        # XGBoost's own bias term (pred_contribs' last column) without its float32 sums.
        self.base_value = base_margin + expected_values(ensemble)

    def _shape(self, values: Array, base: Array) -> tuple[Array, Array]:
        """(rows, features, outputs) and (rows, outputs) from per-output values and bases."""
        if values.shape[2] == 1 and self.task == "classification":
            return binary_margin(values[:, :, 0], base[:, 0])
        return values, base

    def explain(self, x: Array) -> Attribution:
        values = self.kernel.shap_values(x)
        base = np.tile(self.base_value, (len(x), 1))
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


def _as_float32_below(thresholds: Array) -> npt.NDArray[np.float32]:
    """float32 thresholds with ``x32 <= t32`` exactly when ``x32 <= t64``: the largest
    float32 not above each float64 threshold."""
    t32 = thresholds.astype(np.float32)
    return np.where(t32 > thresholds, np.nextafter(t32, np.float32(-np.inf)), t32)


def shap_ensemble(model: Any, n_features: int) -> TreeEnsemble:
    """The trees of a scikit-learn ensemble as shap reads them (values already scaled by
    the learning rate or the number of trees), one copy of a tree per output. Inputs are
    compared as the estimator compares them: in float32 (trees, forests, gradient
    boosting), or in float64 (histogram gradient boosting)."""
    if model.trees is None or model.input_dtype not in (np.float32, np.float64):
        raise ValueError(f"trees comparing {model.input_dtype} inputs")
    trees = model.trees[: model.tree_limit] if model.tree_limit else model.trees
    if any(np.any(t.threshold_types != 0) for t in trees if hasattr(t, "threshold_types")):
        raise ValueError("split types other than <=")
    wide = model.input_dtype is np.float64
    n_outputs = int(model.num_outputs)
    # One value per output on every node, or (multiclass histogram boosting) one tree per
    # class in turn, each with a single value.
    stacks = max(1, int(getattr(model, "num_stacked_models", 1)))
    tables = []
    for i, tree in enumerate(trees):
        thresholds = tree.thresholds if wide else _as_float32_below(tree.thresholds)
        width = int(tree.values.shape[1])
        outputs = range(n_outputs) if width == n_outputs else [i % stacks]
        for k in outputs:
            tables.append(
                Tree(
                    left=tree.children_left,
                    right=tree.children_right,
                    feature=tree.features,
                    threshold=thresholds,
                    default_left=tree.children_default == tree.children_left,
                    cover=tree.node_sample_weight,
                    value=tree.values[:, k if width == n_outputs else 0],
                    output=k,
                )
            )
    dtype = np.float64 if wide else np.float32
    return join(tables, n_features, n_outputs, left_if_equal=True, threshold_dtype=dtype)


def per_class_boosting(estimator: Any) -> bool:
    """A multiclass GradientBoostingClassifier: one regression tree per class and stage,
    summed in log-odds (shap's TreeExplainer takes binary ones only)."""
    return type(estimator).__name__ == "GradientBoostingClassifier" and (
        len(getattr(estimator, "classes_", ())) > 2
    )


def gradient_boosting_model(estimator: Any) -> tuple[TreeEnsemble, Array]:
    """A fitted GradientBoostingClassifier/Regressor as an ensemble (tree ``[i, k]`` adds
    ``learning_rate`` times its leaf to output ``k``) and its base value per output: the
    init estimator's prior in log-odds (or value) plus each output's expected tree sum."""
    init = estimator.init_
    if not (isinstance(init, str) and init == "zero") and type(init).__name__ not in (
        "DummyClassifier",
        "DummyRegressor",
    ):
        raise ValueError(f"init estimator {type(init).__name__} depends on the row")
    stages = estimator.estimators_
    n_outputs = stages.shape[1]
    rate = float(estimator.learning_rate)
    trees = []
    for stage in stages:
        for k, regressor in enumerate(stage):
            t = regressor.tree_
            left = np.asarray(t.children_left, dtype=np.int64)
            missing = getattr(t, "missing_go_to_left", None)
            trees.append(
                Tree(
                    left=left,
                    right=t.children_right,
                    feature=np.where(left >= 0, t.feature, 0),
                    threshold=_as_float32_below(np.asarray(t.threshold, dtype=np.float64)),
                    default_left=(
                        np.zeros(len(left), bool) if missing is None else np.asarray(missing) == 1
                    ),
                    cover=t.weighted_n_node_samples,
                    value=rate * np.asarray(t.value, dtype=np.float64).reshape(len(left), -1)[:, 0],
                    output=k,
                )
            )
    ensemble = join(trees, int(estimator.n_features_in_), n_outputs, left_if_equal=True)
    # a constant init estimator (checked above): its prior holds for every row
    prior = _prior(estimator, ensemble, np.zeros((1, ensemble.n_features)))
    return ensemble, prior + expected_values(ensemble)


def _members(words: npt.NDArray[np.uint32]) -> set[int]:
    """The categories in a bitset of 32-bit words."""
    return {32 * i + b for i, w in enumerate(words.tolist()) for b in range(32) if w >> b & 1}


def categorical_hist_boosting(estimator: Any) -> bool:
    """A HistGradientBoosting model with categorical splits (shap reads them as <= 0)."""
    mask = getattr(estimator, "is_categorical_", None)
    return type(estimator).__name__.startswith("HistGradientBoosting") and bool(
        mask is not None and np.any(mask)
    )


def hist_gradient_boosting_model(estimator: Any) -> tuple[TreeEnsemble, Array]:
    """A fitted HistGradientBoostingClassifier/Regressor with categorical features as an
    ensemble over its encoded columns (``encode_categories``), and its base value per
    output.

    scikit-learn publishes no reader for these trees: like shap, this reads the fitted
    predictors (``_predictors``). Their categorical nodes test the category's code (the
    model's ordinal encoding, unknown categories missing): the codes in the node's set go
    left, other codes right, a missing value the node's missing way."""
    trees = []
    for stage in estimator._predictors:
        for k, predictor in enumerate(stage):
            nodes = predictor.nodes
            leaf = nodes["is_leaf"].astype(bool)
            categories: list[list[int] | None] = [None] * len(nodes)
            for n in np.flatnonzero(nodes["is_categorical"].astype(bool) & ~leaf):
                words = predictor.raw_left_cat_bitsets[nodes["bitset_idx"][n]]
                categories[n] = sorted(_members(words))
            trees.append(
                Tree(
                    left=np.where(leaf, -1, nodes["left"]),
                    right=np.where(leaf, -1, nodes["right"]),
                    feature=nodes["feature_idx"],
                    threshold=nodes["num_threshold"],
                    default_left=nodes["missing_go_to_left"].astype(bool),
                    cover=nodes["count"],
                    value=nodes["value"],
                    output=k,
                    categories=categories,
                )
            )
    n_outputs = len(estimator._predictors[0])
    n_features = int(estimator.n_features_in_)
    ensemble = join(trees, n_features, n_outputs, left_if_equal=True, threshold_dtype=np.float64)
    probe = np.zeros((1, n_features))
    prior = _prior(estimator, ensemble, probe, encode_categories(estimator, probe))
    return ensemble, prior + expected_values(ensemble)


def encode_categories(estimator: Any, x: Array) -> Array:
    """Rows as a categorical histogram boosting model's trees read them: its categorical
    columns first, as codes (unknown categories missing), then the numerical ones."""
    names = getattr(estimator, "feature_names_in_", None)
    frame = x if names is None else pd.DataFrame(x, columns=names)
    return np.asarray(estimator._preprocessor.transform(frame), dtype=np.float64)


def encoded_order(estimator: Any) -> npt.NDArray[np.int64]:
    """The input column of each encoded column (categorical ones first)."""
    mask = np.asarray(estimator.is_categorical_, dtype=bool)
    return np.concatenate([np.flatnonzero(mask), np.flatnonzero(~mask)]).astype(np.int64)


def _prior(
    estimator: Any, ensemble: TreeEnsemble, probe: Array, trees_see: Array | None = None
) -> Array:
    """What a boosting model outputs beyond its trees (its init prediction, the same for
    every row): its decision function minus the trees' sum, read on one row (``probe``,
    as the trees see it: ``trees_see``)."""
    names = getattr(estimator, "feature_names_in_", None)
    frame = probe if names is None else pd.DataFrame(probe, columns=names)
    if hasattr(estimator, "decision_function"):
        raw = np.asarray(estimator.decision_function(frame), dtype=np.float64).reshape(1, -1)
    else:
        raw = np.asarray(estimator.predict(frame), dtype=np.float64).reshape(1, -1)
    seen = probe if trees_see is None else trees_see
    return np.asarray(raw[0] - predict(ensemble, seen)[0], dtype=np.float64)


class SklearnTreeShap(InlineExplainer):
    """Exact path-dependent TreeSHAP of scikit-learn tree ensembles (random forest, extra
    trees, gradient boosting incl. multiclass, histogram gradient boosting, single trees):
    the trees as shap reads them (multiclass gradient boosting: as the estimator holds
    them, per class), explained by the leaf tables or the float64 recursive kernel."""

    method = "tree_shap"

    @classmethod
    def supports(cls, model: ModelVersion) -> bool:
        if model.flavor != "sklearn":
            return False
        estimator = model.runtime.native
        name = type(estimator).__name__
        return any(k in name for k in ("Forest", "Trees", "GradientBoosting", "DecisionTree"))

    def __init__(self, model: ModelVersion) -> None:
        self.estimator: Any = model.runtime.native
        self.task = model.task
        self.explainer: Any = None
        self.kernel: TreeKernel | None = None
        # categorical histogram boosting: the trees read encoded columns, in this order
        self.encoded: npt.NDArray[np.int64] | None = None
        if per_class_boosting(self.estimator) or categorical_hist_boosting(self.estimator):
            if per_class_boosting(self.estimator):
                ensemble, self.expected = gradient_boosting_model(self.estimator)
            else:
                ensemble, self.expected = hist_gradient_boosting_model(self.estimator)
                self.encoded = encoded_order(self.estimator)
            self.output: OutputSpace = "margin" if model.task == "classification" else "value"
            self.kernel = exact(ensemble, model)
        else:
            import shap

            self.explainer = shap.TreeExplainer(self.estimator)
            space = _SPACES.get(self.explainer.model.tree_output)
            if space is None:
                raise ValueError(f"unsupported tree output {self.explainer.model.tree_output!r}")
            self.output = "value" if model.task == "regression" else space
            self.expected = np.atleast_1d(
                np.asarray(self.explainer.expected_value, dtype=np.float64)
            )
            try:
                ensemble = shap_ensemble(self.explainer.model, self.estimator.n_features_in_)
            except ValueError as exc:  # shap's own (float64) TreeSHAP instead
                log.info("TreeSHAP of %s v%s by shap: %s", model.name, model.version, exc)
            else:
                self.kernel = exact(ensemble, model)
        self.tables = self.kernel if isinstance(self.kernel, LeafTables) else None

    def explain(self, x: Array) -> Attribution:
        if self.kernel is not None and self.encoded is not None:
            encoded = self.kernel.shap_values(encode_categories(self.estimator, x))
            raw = np.empty_like(encoded)
            raw[:, self.encoded] = encoded  # back to the input's columns
            raw = raw if raw.shape[2] > 1 else raw[:, :, 0]
        elif self.kernel is not None:
            raw = self.kernel.shap_values(x)
            raw = raw if raw.shape[2] > 1 else raw[:, :, 0]
        else:
            raw = np.asarray(
                self.explainer.shap_values(x, check_additivity=False), dtype=np.float64
            )
        expected = self.expected
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
