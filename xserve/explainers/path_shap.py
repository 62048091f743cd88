"""Exact path-dependent TreeSHAP in float64 for any tree ensemble, compiled with numba.

The polynomial-time recursion of Lundberg et al. (2018, "Consistent individualized
feature attribution for tree ensembles", Algorithm 2), walked with an explicit stack:
each node extends the path of unique features above it by the fraction of the
background (the cover) that follows the split, and each leaf unwinds that path once per
feature to read its Shapley weight. A feature met again lower down is unwound first and
re-entered with the product of its fractions, so repeated features, paths of any width
and trees of any size cost ``O(leaves * depth^2)`` a tree and nothing at load.

It serves what the leaf tables (``leaf_tables``) do not: paths over more distinct
features than they tabulate, ensembles past their budget, categorical and
zero-as-missing splits. The values are those of ``shap.TreeExplainer`` with
``feature_perturbation="tree_path_dependent"`` (and of XGBoost's and LightGBM's
``pred_contrib``), summed in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from xserve.explainers.leaf_tables import (
    ZERO_BAND,
    LeafTables,
    TreeEnsemble,
    _compiled,
)

__all__ = ["PathShap", "TreeKernel", "exact_kernel", "expected_values", "predict"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_NUMERIC, _ZERO_MISSING, _CATEGORICAL = 0, 1, 2
_LARGEST_CATEGORY = 2.0**31
"""Values from here up are no category (XGBoost refuses them from 2^24, LightGBM's int cast
overflows)."""


@_compiled
def _goes_left(
    v: float,
    node: int,
    threshold: Any,
    default_left: Any,
    left_if_equal: bool,
    kind: Any,
    category_start: I64,
    category_bits: Any,
    truncate_negative: bool,
) -> bool:  # pragma: no cover  (compiled)
    if np.isnan(v):
        return bool(default_left[node])
    k = kind[node]
    if k == _ZERO_MISSING and -ZERO_BAND <= v <= ZERO_BAND:
        return bool(default_left[node])
    if k == _CATEGORICAL:
        if v < 0.0 and not (truncate_negative and v > -1.0):
            return False
        if v >= _LARGEST_CATEGORY:
            return False
        c = np.int64(v)
        word = category_start[node] + (c >> 5)
        if word >= category_start[node + 1]:
            return False
        return bool((np.int64(category_bits[word]) >> (c & 31)) & 1)
    if left_if_equal:
        return bool(v <= threshold[node])
    return bool(v < threshold[node])


@_compiled
def _extend(
    feat: I64, zero: F64, one: F64, w: F64, depth: int, z: float, o: float, f: int
) -> None:  # pragma: no cover  (compiled)
    """Add a feature with zero fraction ``z`` and one fraction ``o`` at ``depth``."""
    feat[depth] = f
    zero[depth] = z
    one[depth] = o
    w[depth] = 1.0 if depth == 0 else 0.0
    scale = 1.0 / (depth + 1)
    for i in range(depth - 1, -1, -1):
        w[i + 1] += o * w[i] * (i + 1) * scale
        w[i] = z * w[i] * (depth - i) * scale


@_compiled
def _unwind(
    feat: I64, zero: F64, one: F64, w: F64, depth: int, at: int
) -> None:  # pragma: no cover  (compiled)
    """Remove the feature at ``at`` from a path ``depth + 1`` long."""
    o, z = one[at], zero[at]
    carry = w[depth]
    for i in range(depth - 1, -1, -1):
        if o != 0.0:
            kept = w[i]
            w[i] = carry * (depth + 1) / ((i + 1) * o)
            carry = kept - w[i] * z * (depth - i) / (depth + 1)
        else:
            w[i] = w[i] * (depth + 1) / (z * (depth - i))
    for i in range(at, depth):
        feat[i] = feat[i + 1]
        zero[i] = zero[i + 1]
        one[i] = one[i + 1]


@_compiled
def _leaf(
    feat: I64,
    zero: F64,
    one: F64,
    w: F64,
    depth: int,
    v: float,
    ratios: F64,
    phi: F64,
    r: int,
    out: int,
) -> None:  # pragma: no cover  (compiled)
    """Each path feature's share of leaf value ``v`` into ``phi[r, feature, out]``.

    A feature's share is the path's weight with it unwound. One fractions are products
    of 0s and 1s: a feature the row leaves the path on (0) unwinds to the same sum
    over ``w`` divided by its zero fraction, so that sum is taken once per leaf; the
    others (1) run the recurrence. ``ratios[0|1|2, depth, i]`` hold its divisions."""
    cold = 0.0
    for i in range(depth):
        cold += w[i] * ratios[2, depth, i]
    for k in range(1, depth + 1):
        o, z = one[k], zero[k]
        if o == z:  # no contribution (and no 0/0)
            continue
        if o == 0.0:
            total = cold / z
        else:
            carry = w[depth]
            total = 0.0
            for i in range(depth - 1, -1, -1):
                part = carry * ratios[0, depth, i]
                total += part
                carry = w[i] - part * z * ratios[1, depth, i]
        phi[r, feat[k], out] += total * (o - z) * v


def _ratios(size: int) -> F64:
    """``(d + 1) / (i + 1)``, ``(d - i) / (d + 1)`` and ``(d + 1) / (d - i)`` for a path
    ``d + 1`` long: the unwinding's divisions, once per model instead of per leaf."""
    d, i = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    with np.errstate(divide="ignore"):
        out = np.stack([(d + 1) / (i + 1), (d - i) / (d + 1), (d + 1) / np.maximum(d - i, 1)])
    return np.ascontiguousarray(out, dtype=np.float64)


@_compiled
def _explain(
    x: Any,
    roots: I64,
    outputs: I64,
    left: I64,
    right: I64,
    feature: I64,
    threshold: Any,
    default_left: Any,
    left_if_equal: bool,
    kind: Any,
    category_start: I64,
    category_bits: Any,
    truncate_negative: bool,
    cover: F64,
    value: F64,
    max_depth: int,
    ratios: F64,
    phi: F64,
) -> None:  # pragma: no cover  (compiled)
    """Rows ``x`` (rows, features) into ``phi`` (rows, features, outputs)."""
    size = max_depth + 2
    # One path per level of the walk; a child copies its parent's level into its own.
    feat = np.empty((size, size), dtype=np.int64)
    zero = np.empty((size, size))
    one = np.empty((size, size))
    w = np.empty((size, size))
    length = np.empty(size, dtype=np.int64)  # last index of each level's path
    # Pending nodes: (node, level, zero fraction, one fraction, parent's split feature).
    s_node = np.empty(2 * size, dtype=np.int64)
    s_level = np.empty(2 * size, dtype=np.int64)
    s_zero = np.empty(2 * size)
    s_one = np.empty(2 * size)
    s_feat = np.empty(2 * size, dtype=np.int64)
    for r in range(x.shape[0]):
        row = x[r]
        for t in range(roots.shape[0]):
            out = outputs[t]
            top = 1
            s_node[0], s_level[0], s_zero[0], s_one[0], s_feat[0] = roots[t], 0, 1.0, 1.0, -1
            while top > 0:
                top -= 1
                node, level = s_node[top], s_level[top]
                z, o, f = s_zero[top], s_one[top], s_feat[top]
                if level == 0:
                    d = 0
                else:
                    d = length[level - 1]
                    for i in range(d + 1):
                        feat[level, i] = feat[level - 1, i]
                        zero[level, i] = zero[level - 1, i]
                        one[level, i] = one[level - 1, i]
                        w[level, i] = w[level - 1, i]
                    for i in range(1, d + 1):
                        if feat[level, i] == f:  # split on before: merge the two
                            z *= zero[level, i]
                            o *= one[level, i]
                            _unwind(feat[level], zero[level], one[level], w[level], d, i)
                            d -= 1
                            break
                    if z == 0.0 and o == 0.0:
                        # No coalition reaches this subtree (the row leaves it and the
                        # background does not enter it): it adds nothing.
                        continue
                    d += 1
                _extend(feat[level], zero[level], one[level], w[level], d, z, o, f)
                length[level] = d
                if left[node] < 0:
                    _leaf(
                        feat[level], zero[level], one[level], w[level], d, value[node], ratios,
                        phi, r, out,
                    )  # fmt: skip
                    continue
                go_left = _goes_left(
                    row[feature[node]],
                    node,
                    threshold,
                    default_left,
                    left_if_equal,
                    kind,
                    category_start,
                    category_bits,
                    truncate_negative,
                )
                hot = left[node] if go_left else right[node]
                cold = right[node] if go_left else left[node]
                c = cover[node]
                hot_z = cover[hot] / c if c > 0.0 else 0.0
                cold_z = cover[cold] / c if c > 0.0 else 0.0
                s_node[top], s_level[top], s_zero[top] = cold, level + 1, cold_z
                s_one[top], s_feat[top] = 0.0, feature[node]
                top += 1
                s_node[top], s_level[top], s_zero[top] = hot, level + 1, hot_z
                s_one[top], s_feat[top] = 1.0, feature[node]
                top += 1


@_compiled
def _walk(
    roots: I64, left: I64, right: I64, cover: F64, value: F64, expected: F64
) -> int:  # pragma: no cover  (compiled)
    """Each tree's cover-weighted mean leaf value into ``expected``; the deepest leaf."""
    n = left.shape[0]
    order = np.empty(n, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    stack = np.empty(n + 1, dtype=np.int64)
    mean = np.zeros(n)
    deepest = 0
    for t in range(roots.shape[0]):
        count = 0
        top = 1
        stack[0] = roots[t]
        depth[roots[t]] = 0
        while top > 0:  # preorder: every child after its parent
            top -= 1
            node = stack[top]
            order[count] = node
            count += 1
            deepest = max(deepest, depth[node])
            if left[node] >= 0:
                for child in (left[node], right[node]):
                    depth[child] = depth[node] + 1
                    stack[top] = child
                    top += 1
        for k in range(count - 1, -1, -1):
            node = order[k]
            if left[node] < 0:
                mean[node] = value[node]
            elif cover[node] > 0.0:
                lc, rc = left[node], right[node]
                mean[node] = (cover[lc] * mean[lc] + cover[rc] * mean[rc]) / cover[node]
            else:
                mean[node] = 0.0
        expected[t] = mean[roots[t]]
    return deepest


def expected_values(ensemble: TreeEnsemble) -> F64:
    """Each output's cover-weighted mean over its trees' leaves: the path-dependent game's
    value with no feature known, to which the attributions add."""
    per_tree = np.zeros(ensemble.roots.shape[0])
    _walk(ensemble.roots, ensemble.left, ensemble.right, ensemble.cover, ensemble.value, per_tree)
    out = np.zeros(ensemble.n_outputs)
    np.add.at(out, ensemble.outputs, per_tree)
    return out


@_compiled
def _predict(
    x: Any,
    roots: I64,
    outputs: I64,
    left: I64,
    right: I64,
    feature: I64,
    threshold: Any,
    default_left: Any,
    left_if_equal: bool,
    kind: Any,
    category_start: I64,
    category_bits: Any,
    truncate_negative: bool,
    value: F64,
    out: F64,
) -> None:  # pragma: no cover  (compiled)
    for r in range(x.shape[0]):
        for t in range(roots.shape[0]):
            node = roots[t]
            while left[node] >= 0:
                go_left = _goes_left(
                    x[r, feature[node]],
                    node,
                    threshold,
                    default_left,
                    left_if_equal,
                    kind,
                    category_start,
                    category_bits,
                    truncate_negative,
                )
                node = left[node] if go_left else right[node]
            out[r, outputs[t]] += value[node]


class PathShap:
    """The recursive kernel over an ensemble; ``shap_values`` for any rows."""

    def __init__(self, ensemble: TreeEnsemble) -> None:
        self.ensemble = ensemble
        n = ensemble.left.shape[0]
        kind = np.zeros(n, dtype=np.int8)
        if ensemble.zero_missing is not None:
            kind[ensemble.zero_missing] = _ZERO_MISSING
        if ensemble.categorical is not None:
            kind[ensemble.categorical] = _CATEGORICAL
        start = ensemble.category_start
        bits = ensemble.category_bits
        self._rules = (
            ensemble.threshold,
            ensemble.default_left,
            ensemble.left_if_equal,
            kind,
            start if start is not None else np.zeros(n + 1, dtype=np.int64),
            bits if bits is not None else np.zeros(1, dtype=np.uint32),
            ensemble.truncate_negative_categories,
        )
        per_tree = np.zeros(ensemble.roots.shape[0])
        self.max_depth = int(
            _walk(
                ensemble.roots,
                ensemble.left,
                ensemble.right,
                ensemble.cover,
                ensemble.value,
                per_tree,
            )
        )
        self._ratios = _ratios(self.max_depth + 2)

    def _rows(self, x: npt.NDArray[np.floating[Any]]) -> Any:
        # compared as the model compares them: in the thresholds' dtype
        return np.ascontiguousarray(np.atleast_2d(x), dtype=self.ensemble.threshold.dtype)

    def shap_values(self, x: npt.NDArray[np.floating[Any]]) -> F64:
        """(rows, features, outputs): each output's attributions, without the base value."""
        ens = self.ensemble
        rows = self._rows(x)
        phi = np.zeros((rows.shape[0], ens.n_features, ens.n_outputs))
        _explain(
            rows,
            ens.roots,
            ens.outputs,
            ens.left,
            ens.right,
            ens.feature,
            *self._rules,
            ens.cover,
            ens.value,
            self.max_depth,
            self._ratios,
            phi,
        )
        return phi

    def predict(self, x: npt.NDArray[np.floating[Any]]) -> F64:
        """(rows, outputs): the sum of each output's leaves the rows reach, in float64."""
        ens = self.ensemble
        rows = self._rows(x)
        out = np.zeros((rows.shape[0], ens.n_outputs))
        _predict(
            rows,
            ens.roots,
            ens.outputs,
            ens.left,
            ens.right,
            ens.feature,
            *self._rules,
            ens.value,
            out,
        )
        return out


TreeKernel = LeafTables | PathShap


def exact_kernel(ensemble: TreeEnsemble) -> tuple[TreeKernel, str | None]:
    """The leaf tables when the ensemble fits them (fastest per row), else the recursive
    kernel; with the reason the tables were not built."""
    try:
        return LeafTables(ensemble), None
    except ValueError as exc:  # too wide, too large or other split rules
        return PathShap(ensemble), str(exc)


def predict(ensemble: TreeEnsemble, x: npt.NDArray[np.floating[Any]]) -> F64:
    """The ensemble's raw output (rows, outputs), without any base score."""
    return PathShap(ensemble).predict(x)
