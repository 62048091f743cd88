"""Exact interventional TreeSHAP for ONNX tree ensembles, with the trees read from the graph.

The one ``TreeEnsembleClassifier``/``TreeEnsembleRegressor`` node (ai.onnx.ml) is parsed into
shap's custom tree format and explained by ``shap.TreeExplainer`` against the version's
background ("interventional": ONNX stores no node covers). Splits follow onnxruntime: compared
in the input's precision, LT/GTE thresholds moved to the next float below, GT/GTE children
swapped, NaN to the true branch only where the node tracks missing values. Every value is then
replaced by its rank among its feature's thresholds, which keeps each split and makes it exact
in shap's interventional code (it rounds thresholds to float32). How onnxruntime turns the leaf
sums into outputs (base values, binary encodings) is folded into the leaf values as a linear
map: attributions are in ``probability``/``value`` space when there is no post-transform and
in ``margin`` space (raw scores) before LOGISTIC or SOFTMAX.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from xserve.explainers.base import Attribution, InlineExplainer, OutputSpace

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = ["OnnxTreeShap"]

Array = npt.NDArray[np.float64]
Tree = dict[str, Any]

_TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
# Nodes that may sit beside the ensemble: label casts, ZipMap, renames.
_PASSIVE_OPS = frozenset({"Cast", "ZipMap", "Identity", "Reshape", "Flatten"})
_TRANSFORMS = {"NONE": None, "LOGISTIC": "logistic", "SOFTMAX": "softmax"}
_MAX_NODES = 32767  # shap's interventional code numbers nodes with a C short


def _tree_node(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The graph's only tree-ensemble node, if it reads the single model input directly."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    trees = [n for n in graph.node if n.op_type in _TREE_OPS and n.domain == "ai.onnx.ml"]
    others = [n.op_type for n in graph.node if n.op_type not in _TREE_OPS]
    if len(inputs) != 1 or len(trees) != 1 or not _PASSIVE_OPS.issuperset(others):
        return None
    return trees[0] if list(trees[0].input) == inputs else None


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, onnx.TensorProto):
            out[a.name.removesuffix("_as_tensor")] = numpy_helper.to_array(value).ravel()
        else:
            out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _floats(attrs: dict[str, Any], name: str) -> Array:
    """``name`` or ``name_as_tensor``: float attributes are float32, tensors may be double."""
    value = attrs.get(name, [])
    dtype = np.float32 if isinstance(value, list) else None
    return np.asarray(value, dtype=dtype).astype(np.float64)


def _head(
    attrs: dict[str, Any],
    regressor: bool,
    k: int,
    n_trees: int,
    weights: Array,
    present: set[int],
    covered: set[int],
) -> tuple[Array, Array, str | None]:
    """(A, c, transform): onnxruntime's pre-transform outputs are A @ leaf_sums + c."""
    post = attrs.get("post_transform", "NONE")
    base = _floats(attrs, "base_values")
    if regressor:
        agg = attrs.get("aggregate_function", "SUM")
        if k != 1 or post != "NONE" or agg not in ("SUM", "AVERAGE"):
            raise ValueError(f"regressor with {k} targets, {post}, {agg} is not supported")
        scale = 1.0 / n_trees if agg == "AVERAGE" else 1.0
        return np.array([[scale]]), base[:1] if len(base) == 1 else np.zeros(1), None
    if post not in _TRANSFORMS:
        raise ValueError(f"post_transform {post} is not supported")
    transform = _TRANSFORMS[post]
    if k < 2 or len(base) > k or (k == 2 and covered != present) or not present:
        # e.g. a binary class scored in some rows only: onnxruntime's rule then changes per row.
        raise ValueError("class weights or base values that onnxruntime handles per row")
    padded = np.zeros(k)
    padded[: len(base)] = base
    if k > 2:
        return np.eye(k), padded, transform
    # Binary, as onnxruntime does it. A class with no weights at all scores 0, whatever its base.
    mask = np.array([0 in present, 1 in present], dtype=np.float64)
    flip = np.array([[-1.0, 0.0], [1.0, 0.0]])  # [-s, s] with s = class 0's sum
    if 1 in present and len(base) == 2:  # p1 = base[1] + p0, p0 = -p1 (class 1's sum unused)
        return flip * mask[:, None], np.array([-padded[1], padded[1]]) * mask, transform
    if 1 in present or len(base) == 2:
        return np.diag(mask), padded * mask, transform
    # Class 0's weights only: one score s = sum + base, read as class 1's, written as
    # [sigmoid(-s), sigmoid(s)] under LOGISTIC, [1 - s, s] if no weight is negative, else [-s, s].
    if post == "LOGISTIC":
        return flip, np.array([-padded[0], padded[0]]), transform
    one = 1.0 if (weights >= 0).all() else 0.0
    return flip, np.array([one - padded[0], padded[0]]), None


@dataclass
class _Ensemble:
    trees: list[Tree]  # shap's custom format, thresholds as ranks (see ``encode``)
    offset: Array
    transform: str | None
    regressor: bool
    dtype: type[np.floating[Any]]  # the precision onnxruntime compares in: the input's
    cuts: list[Array]  # per feature, its sorted distinct thresholds

    def encode(self, x: Array) -> Array:
        """Each value as its rank among its feature's thresholds: #{t < x} <= k iff x <= t_k."""
        x = np.asarray(x, dtype=np.float64).astype(self.dtype).astype(np.float64)
        if x.ndim != 2 or x.shape[1] < len(self.cuts):
            raise ValueError(f"expected rows of at least {len(self.cuts)} features")
        z = np.zeros_like(x)
        for f, cuts in enumerate(self.cuts):
            z[:, f] = np.searchsorted(cuts, x[:, f], side="left")
        z[np.isnan(x)] = np.nan
        return z

    def raw(self, z: Array) -> Array:
        """Outputs before any post-transform, by walking the trees over encoded rows."""
        rows = np.arange(len(z))
        out = np.tile(self.offset, (len(z), 1))
        for t in self.trees:
            node = np.zeros(len(z), dtype=np.intp)
            while (active := t["children_left"][node] >= 0).any():
                v = z[rows, np.maximum(t["features"][node], 0)]
                left, right = t["children_left"][node], t["children_right"][node]
                step = np.where(
                    np.isnan(v),
                    t["children_default"][node],
                    np.where(v <= t["thresholds"][node], left, right),
                )
                node = np.where(active, step, node)
            out += t["values"][node]
        return out


def _tree(
    a: dict[str, Any],
    modes: list[str],
    span: range,
    where: dict[tuple[int, int], int],
    thresholds: Array,
    values: Array,
) -> Tree:
    """One tree (nodes ``span`` of the attribute lists) in shap's format, real thresholds."""
    n, s = len(span), span.start
    if n > _MAX_NODES:
        raise ValueError(f"a tree of {n} nodes (shap's interventional code takes {_MAX_NODES})")
    left, right = -np.ones(n, dtype=np.int32), -np.ones(n, dtype=np.int32)
    default, features, thr = -np.ones(n, dtype=np.int32), -np.ones(n, dtype=np.int32), np.zeros(n)
    missing_true = a.get("nodes_missing_value_tracks_true") or [0] * len(modes)
    for j, i in enumerate(span):
        mode = modes[i]
        if mode == "LEAF":
            continue
        if mode not in ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT"):
            raise ValueError(f"split mode {mode} is not supported")
        tree_id = int(a["nodes_treeids"][i])
        true = where[tree_id, int(a["nodes_truenodeids"][i])] - s
        false = where[tree_id, int(a["nodes_falsenodeids"][i])] - s
        t = thresholds[i]
        if mode in ("BRANCH_LT", "BRANCH_GTE"):  # x < t  <=>  x <= the float below t
            t = np.nextafter(t, thresholds.dtype.type(-np.inf))
        swap = mode in ("BRANCH_GTE", "BRANCH_GT")  # true goes right
        left[j], right[j] = (false, true) if swap else (true, false)
        default[j] = true if missing_true[i] else false  # NaN fails every comparison
        features[j], thr[j] = int(a["nodes_featureids"][i]), float(t)
    return {
        "children_left": left,
        "children_right": right,
        "children_default": default,
        "features": features,
        "thresholds": thr,
        "values": values[s : s + n],
        "node_sample_weight": np.ones(n),
    }


def _parse(model: onnx.ModelProto) -> _Ensemble:
    node = _tree_node(model)
    if node is None:
        raise ValueError("the graph is not a single tree ensemble reading the model input")
    a = _attrs(node)
    regressor = node.op_type == "TreeEnsembleRegressor"
    elem = model.graph.input[0].type.tensor_type.elem_type
    dtype: type[np.floating[Any]] = np.float64 if elem == onnx.TensorProto.DOUBLE else np.float32
    tree_ids = np.asarray(a["nodes_treeids"], dtype=np.int64)
    modes = [m.decode() if isinstance(m, bytes) else m for m in a["nodes_modes"]]
    # Trees in listed order, each a contiguous run whose first node is the root (as onnxruntime).
    starts = np.flatnonzero(np.r_[True, tree_ids[1:] != tree_ids[:-1]])
    if len(set(tree_ids.tolist())) != len(starts):
        raise ValueError("the nodes of a tree are not contiguous")
    spans = [range(s, e) for s, e in zip(starts, [*starts[1:], len(modes)], strict=True)]
    pairs = zip(tree_ids, a["nodes_nodeids"], strict=True)
    where = {(int(t), int(n)): i for i, (t, n) in enumerate(pairs)}
    prefix = "target_" if regressor else "class_"
    labels = a.get("classlabels_int64s") or a.get("classlabels_strings") or []
    k = int(a.get("n_targets", 1)) if regressor else len(labels)
    ids = np.asarray(a[prefix + "ids"], dtype=np.int64)
    if k < 1 or ids.min(initial=0) < 0 or ids.max(initial=0) >= k:
        raise ValueError(f"{prefix}ids outside the {k} outputs")
    weights = _floats(a, prefix + "weights")
    pairs = zip(a[prefix + "treeids"], a[prefix + "nodeids"], strict=True)
    leaves = np.array([where[int(t), int(n)] for t, n in pairs], dtype=np.int64)
    sums, has = np.zeros((len(modes), k)), np.zeros((len(modes), k), dtype=bool)
    np.add.at(sums, (leaves, ids), weights)
    has[leaves, ids] = True
    is_leaf = np.array([m == "LEAF" for m in modes])
    # A class scores in every row when some tree gives it a weight at every leaf.
    covered = {c for c in range(k) if any(has[sp][is_leaf[sp], c].all() for sp in spans)}
    present = set(ids.tolist())
    matrix, offset, transform = _head(a, regressor, k, len(spans), weights, present, covered)
    thresholds, values = _floats(a, "nodes_values").astype(dtype), sums @ matrix.T
    trees = [_tree(a, modes, sp, where, thresholds, values) for sp in spans]
    n_features = 1 + max((int(t["features"].max()) for t in trees), default=-1)
    cuts = [
        np.unique(np.concatenate([t["thresholds"][t["features"] == f] for t in trees]))
        for f in range(n_features)
    ]
    for t in trees:
        for f, f_cuts in enumerate(cuts):
            split = t["features"] == f
            t["thresholds"][split] = np.searchsorted(f_cuts, t["thresholds"][split])
    return _Ensemble(trees, offset, transform, regressor, dtype, cuts)


def _apply(transform: str | None, raw: Array) -> Array:
    if transform == "logistic":
        return np.asarray(1.0 / (1.0 + np.exp(-raw)), dtype=np.float64)
    if transform == "softmax":
        e = np.exp(raw - raw.max(axis=1, keepdims=True))
        return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)
    return raw


class OnnxTreeShap(InlineExplainer):
    """Interventional TreeSHAP on an ONNX tree ensemble against the version's background."""

    method = "tree_shap"

    @classmethod
    def supports(cls, model: ModelVersion) -> bool:
        return (
            model.flavor == "onnx"
            and model.background is not None
            and _tree_node(model.runtime.native) is not None
        )

    def __init__(self, model: ModelVersion) -> None:
        import shap

        if model.background is None:
            raise ValueError("tree_shap on ONNX needs a background sample")
        self.ensemble = e = _parse(model.runtime.native)
        self.runtime = model.runtime
        plain: OutputSpace = "value" if e.regressor else "probability"
        self.output: OutputSpace = "margin" if e.transform else plain
        self.explainer = shap.TreeExplainer(
            {"trees": e.trees, "base_offset": e.offset},
            data=e.encode(model.background),
            feature_perturbation="interventional",
            model_output="raw",
        )
        if self.output == "margin":  # our raw scores must be what onnxruntime transforms
            rows = model.background[:32]
            probabilities = _apply(self.ensemble.transform, self.raw(rows))
            gap = np.abs(probabilities - self.runtime.predict(rows)).max()
            if gap > 1e-4:
                raise ValueError(f"the parsed trees disagree with onnxruntime (gap {gap:.2e})")

    def raw(self, x: Array) -> Array:
        """The ensemble's scores before any post-transform, computed from the parsed trees."""
        return self.ensemble.raw(self.ensemble.encode(x))

    def explain(self, x: Array) -> Attribution:
        z = self.ensemble.encode(x)
        raw = np.asarray(self.explainer.shap_values(z, check_additivity=False), dtype=np.float64)
        values = raw.reshape(len(z), z.shape[1], -1)
        expected = np.atleast_1d(np.asarray(self.explainer.expected_value, dtype=np.float64))
        return Attribution(self.method, self.output, values, np.tile(expected, (len(z), 1)))

    def model_output(self, x: Array) -> Array:
        if self.output == "margin":
            return self.raw(x)
        return np.asarray(self.runtime.predict(x), dtype=np.float64).reshape(len(x), -1)
