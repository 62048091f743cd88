"""Exact interventional TreeSHAP for ONNX tree ensembles, with the trees read from the graph.

The one ``TreeEnsembleClassifier``/``TreeEnsembleRegressor`` node (ai.onnx.ml) is parsed and
each split is evaluated as onnxruntime does: in the input's precision (float32 for a float
input), with the node's own mode (``BRANCH_LEQ``, ``BRANCH_LT``, ``BRANCH_GTE``,
``BRANCH_GT``), and NaN to the true branch only where the node tracks missing values. How
onnxruntime turns the leaf sums into outputs (base values, binary encodings) is folded into
the leaf values as a linear map: attributions are in ``probability``/``value`` space when
there is no post-transform and in ``margin`` space (raw scores) before LOGISTIC or SOFTMAX.

The game is the interventional one, ``v(S) = mean_b f(x_S, b_rest)`` over the reference rows
``b`` (the version's background, at most ``explain.background_rows`` of them), and it is
computed exactly, leaf by leaf. The hybrid row reaches leaf ``l`` iff, for each distinct
feature ``k`` on its path, the row that supplies ``k`` meets every split of the path on
``k``. With ``X`` the features on which ``x`` meets them and ``B`` those on which ``b`` does,
``l`` is reached iff ``A = X - B`` is inside ``S`` and ``R = B - X`` outside it (and it is
never reached if some feature is in neither). That game's Shapley values are closed-form:
``v_l (|A|-1)! |R|! / (|A|+|R|)!`` for each feature of ``A`` and ``-v_l |A|! (|R|-1)! /
(|A|+|R|)!`` for each of ``R``. ``B`` depends only on the reference row, so each leaf keeps
the distinct ``B`` patterns of the background with their weights (computed once, at load)
and a row costs, per leaf, its own pattern and one test per distinct reference pattern: not
one tree walk per background row. Everything is float64; no threshold is rounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numba
import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from xserve.explainers.base import Attribution, InlineExplainer, OutputSpace

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = ["BackgroundUse", "OnnxTreeShap"]

Array = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
# Nodes that may sit beside the ensemble: label casts, ZipMap, renames.
_PASSIVE_OPS = frozenset({"Cast", "ZipMap", "Identity", "Reshape", "Flatten"})
_TRANSFORMS = {"NONE": None, "LOGISTIC": "logistic", "SOFTMAX": "softmax"}
_MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3}
MAX_PATH_FEATURES = 62
"""Distinct features on one root-to-leaf path: a leaf's patterns are bits of an int64."""
MAX_REFERENCE_PATTERNS = 1 << 22
"""Budget of (leaf, distinct background pattern) pairs kept per version (16 bytes each)."""
SAMPLE_SEED = 0
"""Seed of the sample drawn when the background has more rows than explain.background_rows."""


def _compiled(fn: Any) -> Any:
    """Compiled once and cached on disk; without a writable cache location, compiled in
    each process instead (as the leaf tables are)."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:
        return numba.njit(nogil=True)(fn)


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


@dataclass(frozen=True)
class _Ensemble:
    """Every tree's nodes, concatenated, and each leaf's root path.

    Leaves have feature -1.
    Leaf ``l``'s path steps are ``step_*[step_start[l]:step_start[l + 1]]``: the node, the
    branch taken (1 for true) and the slot of the node's feature among the leaf's distinct
    path features, ``slot_feature[l, slot]``.
    """

    feature: I64
    threshold: Array  # values of the input's precision, held as float64
    mode: I64  # index in _MODES
    missing_true: npt.NDArray[np.bool_]
    step_start: I64
    step_node: I64
    step_true: npt.NDArray[np.bool_]
    step_slot: I64
    n_slots: I64
    slot_feature: I64
    leaf_value: Array  # (leaves, outputs), pre-transform
    offset: Array
    transform: str | None
    regressor: bool
    dtype: type[np.floating[Any]]  # the precision onnxruntime compares in: the input's
    n_features: int

    def rows(self, x: npt.ArrayLike) -> Array:
        """``x`` rounded to the input's precision, as onnxruntime reads it, in float64."""
        z = np.asarray(x, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] < self.n_features:
            raise ValueError(f"expected rows of at least {self.n_features} features")
        return np.ascontiguousarray(z.astype(self.dtype).astype(np.float64))

    @property
    def splits(self) -> tuple[Any, ...]:
        return (
            self.feature,
            self.threshold,
            self.mode,
            self.missing_true,
            self.step_start,
            self.step_node,
            self.step_true,
            self.step_slot,
            self.n_slots,
        )


def _paths(
    true_child: I64, false_child: I64, feature: I64, roots: list[int]
) -> tuple[list[int], list[list[int]], list[tuple[int, bool, int]], list[int]]:
    """Each leaf (in tree order) with its distinct path features and path steps."""
    leaves: list[int] = []
    slots_of: list[list[int]] = []
    steps: list[tuple[int, bool, int]] = []
    starts = [0]
    for root in roots:
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(root, [])]
        while stack:
            node, path = stack.pop()
            if len(path) > len(feature):  # a malformed graph: node ids that loop
                raise ValueError("a tree's nodes form a cycle")
            if feature[node] >= 0:
                stack.append((int(false_child[node]), [*path, (node, False)]))
                stack.append((int(true_child[node]), [*path, (node, True)]))
                continue
            slots: list[int] = []
            for parent, took in path:
                f = int(feature[parent])
                if f not in slots:
                    slots.append(f)
                steps.append((parent, took, slots.index(f)))
            if len(slots) > MAX_PATH_FEATURES:
                raise ValueError(f"a path splits on {len(slots)} distinct features")
            leaves.append(node)
            slots_of.append(slots)
            starts.append(len(steps))
    return leaves, slots_of, steps, starts


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

    n = len(modes)
    feature, mode = -np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    true_child, false_child = -np.ones(n, dtype=np.int64), -np.ones(n, dtype=np.int64)
    tracks = a.get("nodes_missing_value_tracks_true") or [0] * n
    for i, m in enumerate(modes):
        if m == "LEAF":
            continue
        if m not in _MODES:
            raise ValueError(f"split mode {m} is not supported")
        t = int(tree_ids[i])
        true_child[i] = where[t, int(a["nodes_truenodeids"][i])]
        false_child[i] = where[t, int(a["nodes_falsenodeids"][i])]
        feature[i], mode[i] = int(a["nodes_featureids"][i]), _MODES[m]
    threshold = _floats(a, "nodes_values").astype(dtype).astype(np.float64)
    leaf_nodes, slots_of, steps, step_start = _paths(
        true_child, false_child, feature, [sp.start for sp in spans]
    )
    width = max(1, max((len(s) for s in slots_of), default=0))
    slot_feature = -np.ones((len(leaf_nodes), width), dtype=np.int64)
    for i, s in enumerate(slots_of):
        slot_feature[i, : len(s)] = s
    step = np.asarray(steps, dtype=np.int64).reshape(-1, 3)
    return _Ensemble(
        feature=feature,
        threshold=threshold,
        mode=mode,
        missing_true=np.asarray(tracks, dtype=bool),
        step_start=np.asarray(step_start, dtype=np.int64),
        step_node=step[:, 0].copy(),
        step_true=step[:, 1].astype(bool),
        step_slot=step[:, 2].copy(),
        n_slots=np.asarray([len(s) for s in slots_of], dtype=np.int64),
        slot_feature=slot_feature,
        leaf_value=(sums @ matrix.T)[leaf_nodes],
        offset=offset,
        transform=transform,
        regressor=regressor,
        dtype=dtype,
        n_features=1 + int(feature.max(initial=-1)),
    )


@_compiled
def _holds(v: float, t: float, mode: int, missing_true: bool) -> bool:  # pragma: no cover
    """onnxruntime's split test: NaN fails every comparison unless the node tracks it."""
    if np.isnan(v):
        return missing_true
    if mode == 0:
        return v <= t
    if mode == 1:
        return v < t
    if mode == 2:
        return v >= t
    return v > t


@_compiled
def _patterns(
    row: Array,
    feature: I64,
    threshold: Array,
    mode: I64,
    missing_true: npt.NDArray[np.bool_],
    step_start: I64,
    step_node: I64,
    step_true: npt.NDArray[np.bool_],
    step_slot: I64,
    n_slots: I64,
    holds: npt.NDArray[np.bool_],
    out: I64,
) -> None:  # pragma: no cover  (compiled)
    """``out[l]``: bit ``s`` set iff ``row`` meets every split of leaf ``l``'s path on its
    slot-``s`` feature (all bits set: the row reaches ``l``)."""
    for node in range(feature.shape[0]):
        if feature[node] >= 0:
            holds[node] = _holds(
                row[feature[node]], threshold[node], mode[node], missing_true[node]
            )
    for leaf in range(n_slots.shape[0]):
        bits = (np.int64(1) << n_slots[leaf]) - 1
        for s in range(step_start[leaf], step_start[leaf + 1]):
            if holds[step_node[s]] != step_true[s]:
                bits &= ~(np.int64(1) << step_slot[s])
        out[leaf] = bits


@_compiled
def _reference_patterns(
    background: Array,
    feature: I64,
    threshold: Array,
    mode: I64,
    missing_true: npt.NDArray[np.bool_],
    step_start: I64,
    step_node: I64,
    step_true: npt.NDArray[np.bool_],
    step_slot: I64,
    n_slots: I64,
    start: I64,
    pattern: I64,
    weight: Array,
) -> int:  # pragma: no cover  (compiled)
    """Each leaf's distinct background patterns (as :func:`_patterns`) with the share of
    rows showing each, leaf ``l``'s at ``start[l]:start[l + 1]``. Returns how many."""
    n = background.shape[0]
    column = np.empty(n, dtype=np.int64)
    at = 0
    for leaf in range(n_slots.shape[0]):  # leaf by leaf: memory stays one column
        start[leaf] = at
        for i in range(n):
            bits = (np.int64(1) << n_slots[leaf]) - 1
            for s in range(step_start[leaf], step_start[leaf + 1]):
                node = step_node[s]
                v = background[i, feature[node]]
                if _holds(v, threshold[node], mode[node], missing_true[node]) != step_true[s]:
                    bits &= ~(np.int64(1) << step_slot[s])
            column[i] = bits
        column.sort()
        run = 1
        for i in range(1, n + 1):
            if i < n and column[i] == column[i - 1]:
                run += 1
                continue
            pattern[at] = column[i - 1]
            weight[at] = run / n
            at += 1
            run = 1
    start[n_slots.shape[0]] = at
    return at


@_compiled
def _interventional(
    x: Array,
    feature: I64,
    threshold: Array,
    mode: I64,
    missing_true: npt.NDArray[np.bool_],
    step_start: I64,
    step_node: I64,
    step_true: npt.NDArray[np.bool_],
    step_slot: I64,
    n_slots: I64,
    slot_feature: I64,
    leaf_value: Array,
    start: I64,
    pattern: I64,
    weight: Array,
    w_in: Array,
    w_out: Array,
    phi: Array,
    raw: Array,
    attribute: bool,
) -> None:  # pragma: no cover  (compiled)
    """The leaf sums ``raw`` (rows, outputs) of each row and, with ``attribute``, its
    interventional Shapley values ``phi`` (rows, features, outputs)."""
    holds = np.empty(feature.shape[0], dtype=np.bool_)
    mine = np.empty(n_slots.shape[0], dtype=np.int64)
    gain = np.empty(slot_feature.shape[1])  # per slot, this leaf's share for x's side
    k = leaf_value.shape[1]
    for i in range(x.shape[0]):
        _patterns(
            x[i],
            feature,
            threshold,
            mode,
            missing_true,
            step_start,
            step_node,
            step_true,
            step_slot,
            n_slots,
            holds,
            mine,
        )
        for leaf in range(n_slots.shape[0]):
            m = n_slots[leaf]
            full = (np.int64(1) << m) - 1
            xm = mine[leaf]
            if xm == full:
                for o in range(k):
                    raw[i, o] += leaf_value[leaf, o]
            if not attribute:
                continue
            # Every reference row compatible with x supplies the features x fails on, so
            # R = full - X for all of them: only A = X - B (and its size) varies.
            outs = full & ~xm
            b = 0
            for s in range(m):
                b += (outs >> s) & 1
            total_out = 0.0
            for s in range(m):
                gain[s] = 0.0
            for r in range(start[leaf], start[leaf + 1]):
                bm = pattern[r]
                if (xm | bm) != full:
                    continue  # a feature neither row supplies: no coalition reaches the leaf
                ins = xm & ~bm
                a, rest = 0, ins
                while rest:  # one step per set bit
                    rest &= rest - 1
                    a += 1
                if a == 0 and b == 0:
                    continue  # both rows reach the leaf: every coalition does
                total_out += weight[r] * w_out[a, b]
                if a:
                    c = weight[r] * w_in[a, b]
                    for s in range(m):
                        if (ins >> s) & 1:
                            gain[s] += c
            for s in range(m):
                c = gain[s] - total_out if (outs >> s) & 1 else gain[s]
                if c != 0.0:
                    f = slot_feature[leaf, s]
                    for o in range(k):
                        phi[i, f, o] += c * leaf_value[leaf, o]


def _shapley_weights(width: int) -> tuple[Array, Array]:
    """``w_in[a, b] = (a-1)! b! / (a+b)!`` and ``w_out[a, b] = a! (b-1)! / (a+b)!``: the
    Shapley value of one player of ``A`` (of ``R``) in the game ``[A <= S, R & S = {}]``."""
    w_in, w_out = np.zeros((width + 1, width + 1)), np.zeros((width + 1, width + 1))
    f = math.factorial
    for a in range(width + 1):
        for b in range(width + 1 - a):
            if a:
                w_in[a, b] = f(a - 1) * f(b) / f(a + b)
            if b:
                w_out[a, b] = f(a) * f(b - 1) / f(a + b)
    return w_in, w_out


@dataclass(frozen=True)
class BackgroundUse:
    """Which background rows are the reference of the interventional game."""

    rows: int
    """Rows used."""
    of: int
    """Rows in the version's background."""
    cap: int
    """explain.background_rows: a larger background is sampled down to this many rows."""

    def describe(self) -> dict[str, Any]:
        sample = "all" if self.rows == self.of else f"random sample, seed {SAMPLE_SEED}"
        return {"rows": self.rows, "of": self.of, "cap": self.cap, "sample": sample}


def _reference(background: Array, cap: int) -> Array:
    """The whole background, or a seeded random sample of ``cap`` rows (in file order)."""
    if len(background) <= cap:
        return background
    chosen = np.random.default_rng(SAMPLE_SEED).choice(len(background), cap, replace=False)
    return background[np.sort(chosen)]


def _apply(transform: str | None, raw: Array) -> Array:
    if transform == "logistic":
        return np.asarray(1.0 / (1.0 + np.exp(-raw)), dtype=np.float64)
    if transform == "softmax":
        e = np.exp(raw - raw.max(axis=1, keepdims=True))
        return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)
    return raw


class OnnxTreeShap(InlineExplainer):
    """Exact interventional TreeSHAP on an ONNX tree ensemble against the version's
    background (all of it, up to ``explain.background_rows`` rows)."""

    method = "tree_shap"

    @classmethod
    def supports(cls, model: ModelVersion) -> bool:
        return (
            model.flavor == "onnx"
            and model.background is not None
            and _tree_node(model.runtime.native) is not None
        )

    def __init__(self, model: ModelVersion) -> None:
        if model.background is None or not len(model.background):
            raise ValueError("tree_shap on ONNX needs a background sample")
        self.ensemble = e = _parse(model.runtime.native)
        self.runtime = model.runtime
        plain: OutputSpace = "value" if e.regressor else "probability"
        self.output: OutputSpace = "margin" if e.transform else plain
        cap = model.manifest.explain.background_rows
        self.reference = reference = e.rows(_reference(model.background, cap))
        """The reference rows, as onnxruntime reads them."""
        self.background_use = BackgroundUse(len(reference), len(model.background), cap)
        bound = int(np.minimum(len(reference), 2.0**e.n_slots).sum())
        if bound > MAX_REFERENCE_PATTERNS:
            raise ValueError(
                f"{len(reference)} background rows over {len(e.n_slots)} leaves exceed the "
                f"budget of {MAX_REFERENCE_PATTERNS} leaf patterns: lower explain.background_rows"
            )
        start = np.zeros(len(e.n_slots) + 1, dtype=np.int64)
        pattern, weight = np.empty(max(bound, 1), dtype=np.int64), np.empty(max(bound, 1))
        used = _reference_patterns(reference, *e.splits, start, pattern, weight)
        self._reference = (start, pattern[:used].copy(), weight[:used].copy())
        self._weights = _shapley_weights(int(e.n_slots.max(initial=0)))
        # The base value: the mean output over the reference rows, i.e. the weight of the
        # patterns that reach each leaf (every bit set).
        leaf_of = np.repeat(np.arange(len(e.n_slots)), np.diff(start))
        reaches = self._reference[1] == (np.int64(1) << e.n_slots[leaf_of]) - 1
        share = np.bincount(leaf_of[reaches], self._reference[2][reaches], len(e.n_slots))
        self.base: Array = e.offset + share @ e.leaf_value
        if self.output == "margin":  # our raw scores must be what onnxruntime transforms
            rows = model.background[:32]
            probabilities = _apply(e.transform, self.raw(rows))
            gap = np.abs(probabilities - self.runtime.predict(rows)).max()
            if gap > 1e-4:
                raise ValueError(f"the parsed trees disagree with onnxruntime (gap {gap:.2e})")

    def _run(self, x: npt.ArrayLike, attribute: bool = True) -> tuple[Array, Array]:
        e = self.ensemble
        rows = e.rows(x)
        phi = np.zeros((len(rows), rows.shape[1], e.leaf_value.shape[1]))
        raw = np.tile(e.offset, (len(rows), 1))
        _interventional(
            rows,
            *e.splits,
            e.slot_feature,
            e.leaf_value,
            *self._reference,
            *self._weights,
            phi,
            raw,
            attribute,
        )
        return phi, raw

    def raw(self, x: Array) -> Array:
        """The ensemble's scores before any post-transform, computed from the parsed trees."""
        return self._run(x, attribute=False)[1]

    def explain(self, x: Array) -> Attribution:
        phi, _ = self._run(x)
        return Attribution(self.method, self.output, phi, np.tile(self.base, (len(phi), 1)))

    def model_output(self, x: Array) -> Array:
        if self.output == "margin":
            return self.raw(x)
        return np.asarray(self.runtime.predict(x), dtype=np.float64).reshape(len(x), -1)
