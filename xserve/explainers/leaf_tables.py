"""Exact path-dependent TreeSHAP from per-leaf tables (the idea of Fast TreeSHAP v2,
Yang 2021), compiled with numba.

For a leaf ``l`` whose root path splits on the distinct features ``P`` (``M`` of
them), the tree's path-dependent game restricted to that leaf is
``f_l(S) = v_l * prod_{k in S} o_k * prod_{k in P - S} z_k``: ``z_k`` is the
product of cover ratios of the path's splits on ``k``, and ``o_k`` is 1 when the
row takes the path's side at every split on ``k``, else 0. Its Shapley value for
``j`` in ``P`` depends on the row only through the set ``T`` of features with
``o_k = 1``:

    phi_j = v_l * (o_j - z_j) * sum_{S <= T - {j}} c_|S| * prod_{k in P - S - {j}} z_k,
    c_s = s! (M - 1 - s)! / M!

so it is precomputed for every ``T`` (``2^M`` of them) at load. Explaining a row
then costs, per leaf, finding ``T`` (one comparison per path split) and ``M``
additions: ``O(leaves * depth)`` per tree instead of the ``O(leaves * depth^2)``
of the recursive algorithm. Summing over leaves gives the same values as
``shap.TreeExplainer``/XGBoost's ``pred_contribs`` (``feature_perturbation=
"tree_path_dependent"``). The tables grow as ``M * 2^M`` a leaf, so ensembles
with long paths over many distinct features are left to the recursive algorithm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["LeafTables", "TooLarge", "TreeEnsemble"]

MAX_PATH_FEATURES = 12
"""Longest run of distinct features on one root-to-leaf path we tabulate."""
MAX_TABLE_ENTRIES = 1 << 25
"""Table budget per model version (8 bytes an entry: 256 MiB)."""

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def _compiled(fn: Any) -> Any:
    """Compiled once and cached on disk; without a writable cache location (a read-only
    root filesystem and no ``NUMBA_CACHE_DIR``), compiled in each process instead."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:
        return numba.njit(nogil=True)(fn)


class TooLarge(ValueError):
    """The ensemble's tables would exceed the budget; use the recursive algorithm."""


@dataclass(frozen=True)
class TreeEnsemble:
    """Binary trees, concatenated. A node goes left when ``x[feature] < threshold``
    (``<=`` when ``left_if_equal``), and left when the value is missing if
    ``default_left``. Children index into the same arrays; -1 marks a leaf."""

    roots: I64
    """First node of each tree."""
    outputs: I64
    """Model output (class) each tree adds to."""
    left: I64
    right: I64
    feature: I64
    threshold: npt.NDArray[np.float32]
    default_left: npt.NDArray[np.bool_]
    cover: F64
    value: F64
    n_features: int
    n_outputs: int
    left_if_equal: bool = False


@dataclass(frozen=True)
class _Leaves:
    """One entry per leaf: its path and its table."""

    output: I64
    n_slots: I64
    slot_feature: I64  # (leaves, max slots)
    step_start: I64  # leaves + 1: its path steps are step_start[l]:step_start[l + 1]
    step_node: I64
    step_left: I64
    step_slot: I64
    table_start: I64
    table: F64


def _leaves(ens: TreeEnsemble) -> _Leaves:
    """Walk every tree, collecting each leaf's path and the tables' sizes."""
    outputs: list[int] = []
    n_slots: list[int] = []
    slot_features: list[list[int]] = []
    zeros: list[list[float]] = []
    values: list[float] = []
    step_start = [0]
    step_node: list[int] = []
    step_left: list[bool] = []
    step_slot: list[int] = []
    table_start = [0]
    left, right = ens.left.tolist(), ens.right.tolist()
    feature, cover = ens.feature.tolist(), ens.cover.tolist()
    for root, out in zip(ens.roots.tolist(), ens.outputs.tolist(), strict=True):
        # (node, path so far as (node, went_left) pairs)
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(root, [])]
        while stack:
            node, path = stack.pop()
            if left[node] >= 0:
                stack.append((right[node], [*path, (node, False)]))
                stack.append((left[node], [*path, (node, True)]))
                continue
            slots: list[int] = []
            z: list[float] = []
            for parent, went_left in path:
                child = left[parent] if went_left else right[parent]
                f = feature[parent]
                if f not in slots:
                    slots.append(f)
                    z.append(1.0)
                k = slots.index(f)
                z[k] *= cover[child] / cover[parent]
                step_node.append(parent)
                step_left.append(went_left)
                step_slot.append(k)
            m = len(slots)
            if m > MAX_PATH_FEATURES:
                raise TooLarge(f"a path splits on {m} distinct features")
            outputs.append(out)
            n_slots.append(m)
            slot_features.append(slots)
            zeros.append(z)
            values.append(float(ens.value[node]))
            step_start.append(len(step_node))
            table_start.append(table_start[-1] + m * (1 << m))
            if table_start[-1] > MAX_TABLE_ENTRIES:
                raise TooLarge(f"tables over {MAX_TABLE_ENTRIES} entries")
    width = max(n_slots, default=0)
    slot_feature = np.full((len(n_slots), max(width, 1)), -1, dtype=np.int64)
    zero = np.ones((len(n_slots), max(width, 1)))
    for i, (slots, z) in enumerate(zip(slot_features, zeros, strict=True)):
        slot_feature[i, : len(slots)] = slots
        zero[i, : len(z)] = z
    n = np.asarray(n_slots, dtype=np.int64)
    start = np.asarray(table_start, dtype=np.int64)
    table = np.empty(int(start[-1]))
    _fill_tables(n, zero, np.asarray(values), start, _shapley_weights(width), table)
    return _Leaves(
        np.asarray(outputs, dtype=np.int64),
        n,
        slot_feature,
        np.asarray(step_start, dtype=np.int64),
        np.asarray(step_node, dtype=np.int64),
        np.asarray(step_left, dtype=np.int64),
        np.asarray(step_slot, dtype=np.int64),
        start,
        table,
    )


def _shapley_weights(width: int) -> F64:
    """``w[m, s] = s! (m - 1 - s)! / m!``: the weight of a coalition of ``s`` of ``m`` players."""
    w = np.zeros((width + 1, max(width, 1)))
    for m in range(1, width + 1):
        for s in range(m):
            w[m, s] = math.factorial(s) * math.factorial(m - 1 - s) / math.factorial(m)
    return w


@_compiled
def _fill_tables(
    n_slots: I64, zero: F64, value: F64, table_start: I64, weights: F64, table: F64
) -> None:  # pragma: no cover  (compiled)
    poly = np.empty(zero.shape[1] + 1)
    for leaf in range(n_slots.shape[0]):
        m = n_slots[leaf]
        z = zero[leaf]
        base = table_start[leaf]
        for t in range(1 << m):
            for j in range(m):
                # prod_{k in T-{j}} (y + z_k): its y^s coefficient sums, over the
                # coalitions S of size s, the zero fractions of T-{j}-S.
                poly[0] = 1.0
                degree = 0
                outside = 1.0  # features the row leaves the path on: never in S
                for k in range(m):
                    if k == j:
                        continue
                    if (t >> k) & 1:
                        degree += 1
                        poly[degree] = 0.0
                        for s in range(degree, 0, -1):
                            poly[s] = poly[s] * z[k] + poly[s - 1]
                        poly[0] *= z[k]
                    else:
                        outside *= z[k]
                total = 0.0
                for s in range(degree + 1):
                    total += weights[m, s] * poly[s]
                one = 1.0 if (t >> j) & 1 else 0.0
                table[base + t * m + j] = value[leaf] * (one - z[j]) * outside * total


@_compiled
def _explain(
    x: npt.NDArray[np.float32],
    feature: I64,
    threshold: npt.NDArray[np.float32],
    default_left: npt.NDArray[np.bool_],
    left_if_equal: bool,
    output: I64,
    n_slots: I64,
    slot_feature: I64,
    step_start: I64,
    step_node: I64,
    step_left: I64,
    step_slot: I64,
    table_start: I64,
    table: F64,
    phi: F64,
) -> None:  # pragma: no cover  (compiled)
    goes_left = np.empty(feature.shape[0], dtype=np.int64)
    row_at = np.empty(n_slots.shape[0], dtype=np.int64)
    for r in range(x.shape[0]):
        row = x[r]
        for node in range(feature.shape[0]):
            f = feature[node]
            if f < 0:
                continue
            v = row[f]
            if np.isnan(v):
                goes_left[node] = default_left[node]
            elif left_if_equal:
                goes_left[node] = v <= threshold[node]
            else:
                goes_left[node] = v < threshold[node]
        # Two passes: every leaf's table row first, then the reads. The rows are
        # scattered over megabytes, and reads whose addresses are all known can be
        # in flight together instead of one cache miss at a time.
        for leaf in range(n_slots.shape[0]):
            m = n_slots[leaf]
            t = (1 << m) - 1
            # Branch-free: which way a row goes is data, and mispredictions cost
            # more than the arithmetic.
            for s in range(step_start[leaf], step_start[leaf + 1]):
                t &= ~((goes_left[step_node[s]] ^ step_left[s]) << step_slot[s])
            row_at[leaf] = table_start[leaf] + t * m
        for leaf in range(n_slots.shape[0]):
            base = row_at[leaf]
            out = output[leaf]
            for j in range(n_slots[leaf]):
                phi[r, slot_feature[leaf, j], out] += table[base + j]


class LeafTables:
    """Precomputed TreeSHAP tables of an ensemble; ``shap_values`` for any rows."""

    def __init__(self, ensemble: TreeEnsemble) -> None:
        self.ensemble = ensemble
        self.leaves = _leaves(ensemble)
        # Internal nodes only carry a feature; leaves get -1 so the kernel skips them.
        self._feature = np.where(ensemble.left >= 0, ensemble.feature, -1).astype(np.int64)

    @property
    def entries(self) -> int:
        return int(self.leaves.table.shape[0])

    def shap_values(self, x: npt.NDArray[np.floating[Any]]) -> F64:
        """(rows, features, outputs): each output's attributions, without the base value."""
        ens, lv = self.ensemble, self.leaves
        rows = np.ascontiguousarray(x, dtype=np.float32)  # as the model compares them
        phi = np.zeros((rows.shape[0], ens.n_features, ens.n_outputs))
        _explain(
            rows,
            self._feature,
            ens.threshold,
            ens.default_left,
            ens.left_if_equal,
            lv.output,
            lv.n_slots,
            lv.slot_feature,
            lv.step_start,
            lv.step_node,
            lv.step_left,
            lv.step_slot,
            lv.table_start,
            lv.table,
            phi,
        )
        return phi
