"""Exact path-dependent TreeSHAP of LightGBM boosters, in float64.

The trees are read from the booster's JSON dump (``Booster.dump_model()``; thresholds
round-trip) into a ``TreeEnsemble`` that keeps LightGBM's own split rules:

* numerical splits go left when ``x <= threshold``, compared in float64;
* ``missing_type: NaN`` sends a missing value the split's default way; ``None`` reads it
  as 0 (so it goes where 0 goes); ``Zero`` sends 0 (within 1e-35) and missing values the
  default way;
* categorical splits (``decision_type: ==``) send the categories listed in their
  ``cat_threshold`` bitset left, anything else right: the value is cast to an integer
  first (so -0.5 is category 0), and negative, missing and huge values go right.

LightGBM reads any input within 1e-35 of 0 as 0 before it walks the trees (on a split at
-1e-35, -1e-35 itself goes right); ``as_lightgbm_reads`` does the same to the rows.

The cover of a node is its training row count (``internal_count``/``leaf_count``), as
LightGBM's own ``pred_contrib`` weighs it. Leaf values already carry the learning rate
and the starting score (``boost_from_average`` folds it into the first tree), so the
attributions add up to the raw score (``predict(raw_score=True)``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from xserve.explainers.base import Attribution, InlineExplainer, OutputSpace, binary_margin
from xserve.explainers.leaf_tables import ZERO_BAND, LeafTables, Tree, TreeEnsemble, join
from xserve.explainers.path_shap import TreeKernel, exact_kernel, expected_values

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion
    from xserve.runtimes.lightgbm import LightGBMRuntime

__all__ = [
    "IDENTITY_OBJECTIVES",
    "LightGBMTreeShap",
    "as_lightgbm_reads",
    "lightgbm_ensemble",
    "objective_of",
]

Array = npt.NDArray[np.float64]
log = logging.getLogger(__name__)

IDENTITY_OBJECTIVES = {"regression", "regression_l1", "huber", "fair", "quantile", "mape"}
"""Objectives whose raw score is the prediction itself (``regression sqrt`` is not)."""


def as_lightgbm_reads(x: npt.NDArray[np.floating[Any]]) -> Array:
    """Rows as LightGBM's predictor reads them: values within 1e-35 of 0 are 0."""
    rows = np.asarray(x, dtype=np.float64)
    return np.where(np.abs(rows) <= ZERO_BAND, 0.0, rows)


def objective_of(dump: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The objective's name and its parameters: ``binary sigmoid:1`` is ("binary",
    {"sigmoid": "1"}); a bare word is a flag (``regression sqrt``: {"sqrt": ""})."""
    name, *rest = str(dump.get("objective", "regression")).split()
    params = {}
    for p in rest:
        key, _, value = p.partition(":")
        params[key] = value
    return name, params


def _tree(structure: dict[str, Any], output: int, scale: float) -> Tree:
    """One tree, numbered in preorder."""
    left: list[int] = []
    right: list[int] = []
    feature: list[int] = []
    threshold: list[float] = []
    default_left: list[bool] = []
    cover: list[float] = []
    value: list[float] = []
    categories: list[list[int] | None] = []
    zero_missing: list[bool] = []
    # (node dict, index of the parent slot to point at it: (parent, is_left) or None)
    stack: list[tuple[dict[str, Any], tuple[int, bool] | None]] = [(structure, None)]
    while stack:
        node, parent = stack.pop()
        me = len(left)
        if parent is not None:
            (left if parent[1] else right)[parent[0]] = me
        left.append(-1)
        right.append(-1)
        cats: list[int] | None = None
        if "split_feature" not in node:  # a leaf
            if node.get("leaf_coeff"):
                raise ValueError("linear trees (leaves hold linear models)")
            feature.append(0)
            threshold.append(0.0)
            default_left.append(False)
            cover.append(float(node.get("leaf_count", 1)))
            value.append(scale * float(node["leaf_value"]))
            zero_missing.append(False)
            categories.append(None)
            continue
        missing = node.get("missing_type", "None")
        feature.append(int(node["split_feature"]))
        if node["decision_type"] == "==":
            cats = [int(c) for c in str(node["threshold"]).split("||")]
            threshold.append(0.0)
            default_left.append(False)  # a missing category goes right
        else:
            t = float(node["threshold"])
            threshold.append(t)
            # missing_type None reads a missing value as 0
            default_left.append(bool(node["default_left"]) if missing != "None" else t >= 0.0)
        cover.append(float(node["internal_count"]))
        value.append(0.0)
        zero_missing.append(missing == "Zero")
        categories.append(cats)
        stack.append((node["right_child"], (me, False)))
        stack.append((node["left_child"], (me, True)))
    return Tree(
        left=left,
        right=right,
        feature=feature,
        threshold=threshold,
        default_left=default_left,
        cover=cover,
        value=value,
        output=output,
        categories=categories if any(c is not None for c in categories) else None,
        zero_missing=zero_missing if any(zero_missing) else None,
    )


def lightgbm_ensemble(dump: dict[str, Any], log_odds_scale: float = 1.0) -> TreeEnsemble:
    """A booster's JSON dump as an ensemble whose outputs are its raw scores (times
    ``log_odds_scale``): tree ``i`` adds to output ``i % num_tree_per_iteration``."""
    per_iteration = int(dump["num_tree_per_iteration"])
    infos = dump["tree_info"]
    scale = log_odds_scale
    if dump.get("average_output"):  # random forest mode: the mean of the iterations
        scale /= max(1, len(infos) // per_iteration)
    trees = [
        _tree(info["tree_structure"], i % per_iteration, scale) for i, info in enumerate(infos)
    ]
    if not trees:
        raise ValueError("the booster has no trees")
    return join(
        trees,
        int(dump["max_feature_idx"]) + 1,
        per_iteration,
        left_if_equal=True,
        threshold_dtype=np.float64,
        truncate_negative_categories=True,
    )


class LightGBMTreeShap(InlineExplainer):
    """Exact path-dependent TreeSHAP of a LightGBM booster in float64 (the values of its
    ``pred_contrib``), from the leaf tables when the trees allow, else the recursive kernel:
    log-odds for classifiers, the value for identity-link regressors, else the raw score."""

    method = "tree_shap"

    @classmethod
    def supports(cls, model: ModelVersion) -> bool:
        return model.flavor == "lightgbm"

    def __init__(self, model: ModelVersion) -> None:
        self.runtime = cast("LightGBMRuntime", model.runtime)
        self.task = model.task
        dump = self.runtime.dump
        name, params = objective_of(dump)
        # log-odds are sigmoid times the raw score (binary, one-vs-all)
        self.scale = (
            float(params.get("sigmoid", "1")) if name in ("binary", "multiclassova") else 1.0
        )
        identity = name in IDENTITY_OBJECTIVES and "sqrt" not in params
        self.output: OutputSpace = "value" if model.task == "regression" and identity else "margin"
        ensemble = lightgbm_ensemble(dump, self.scale)
        self.kernel: TreeKernel
        self.kernel, why = exact_kernel(ensemble)
        if why is not None:
            log.info(
                "TreeSHAP of %s v%s by the recursive kernel: %s", model.name, model.version, why
            )
        self.tables = self.kernel if isinstance(self.kernel, LeafTables) else None
        self.base_value = expected_values(ensemble)

    def explain(self, x: Array) -> Attribution:
        values = self.kernel.shap_values(as_lightgbm_reads(x))
        base = np.tile(self.base_value, (len(x), 1))
        if values.shape[2] == 1 and self.task == "classification":
            values, base = binary_margin(values[:, :, 0], base[:, 0])
        return Attribution(self.method, self.output, values, base)

    def model_output(self, x: Array) -> Array:
        raw = self.scale * np.asarray(self.runtime.raw_score(x), dtype=np.float64)
        if raw.ndim == 2:
            return raw
        return np.column_stack([-raw, raw]) if self.task == "classification" else raw[:, None]
