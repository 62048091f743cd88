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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["ZERO_BAND", "LeafTables", "TooLarge", "Tree", "TreeEnsemble", "join"]

MAX_PATH_FEATURES = 12
"""Longest run of distinct features on one root-to-leaf path we tabulate."""
MAX_TABLE_ENTRIES = 1 << 22
"""Table budget per model version (8 bytes an entry: 32 MiB); larger ensembles are
explained by the recursive algorithm."""

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


ZERO_BAND = float(np.float32(1e-35))
"""LightGBM's zero: a value within +-this of 0 is missing on a zero-as-missing split."""


@dataclass(frozen=True)
class TreeEnsemble:
    """Binary trees, concatenated. A node goes left when ``x[feature] < threshold``
    (``<=`` when ``left_if_equal``), and left when the value is missing if
    ``default_left``. Children index into the same arrays; -1 marks a leaf.

    Rows are compared in the thresholds' dtype: float32 (XGBoost, scikit-learn) or
    float64 (LightGBM). Two further split rules, both optional:

    * ``categorical`` nodes send a row left when its value, truncated to an integer, is
      one of the node's categories: bit ``c`` of the node's 32-bit words
      ``category_bits[category_start[n]:category_start[n + 1]]``. Negative values and
      categories past the words go right (values in (-1, 0) are category 0 when
      ``truncate_negative_categories``, as LightGBM casts before it compares); a missing
      value goes the default way.
    * ``zero_missing`` nodes treat a value within ``ZERO_BAND`` of 0 as missing
      (LightGBM's ``missing_type: Zero``).
    """

    roots: I64
    """First node of each tree."""
    outputs: I64
    """Model output (class) each tree adds to."""
    left: I64
    right: I64
    feature: I64
    threshold: npt.NDArray[np.floating[Any]]
    default_left: npt.NDArray[np.bool_]
    cover: F64
    value: F64
    n_features: int
    n_outputs: int
    left_if_equal: bool = False
    categorical: npt.NDArray[np.bool_] | None = None
    category_start: I64 | None = None
    category_bits: npt.NDArray[np.uint32] | None = None
    zero_missing: npt.NDArray[np.bool_] | None = None
    truncate_negative_categories: bool = False

    @property
    def plain(self) -> bool:
        """Only threshold splits with a default direction for missing values."""
        return not any(
            flags is not None and bool(flags.any())
            for flags in (self.categorical, self.zero_missing)
        )


class Tree(NamedTuple):
    """One tree, its children indexing its own nodes (-1 for none)."""

    left: npt.ArrayLike
    right: npt.ArrayLike
    feature: npt.ArrayLike
    threshold: npt.ArrayLike
    default_left: npt.ArrayLike
    cover: npt.ArrayLike
    value: npt.ArrayLike
    output: int = 0
    categories: Sequence[Sequence[int] | None] | None = None
    """Per node: the categories that go left (None for a threshold split)."""
    zero_missing: npt.ArrayLike | None = None
    """Per node: whether a value near 0 counts as missing."""


def _category_words(categories: Sequence[int]) -> list[int]:
    """A category set as 32-bit words, bit ``c % 32`` of word ``c // 32``."""
    cats = [int(c) for c in categories]
    if any(c < 0 for c in cats):
        raise ValueError("negative category in a split")
    words = [0] * (max(cats, default=-1) // 32 + 1)
    for c in cats:
        words[c >> 5] |= 1 << (c & 31)
    return words


def join(
    trees: Sequence[Tree],
    n_features: int,
    n_outputs: int,
    left_if_equal: bool = False,
    threshold_dtype: type = np.float32,
    truncate_negative_categories: bool = False,
) -> TreeEnsemble:
    """The trees as one ensemble: their nodes concatenated, children renumbered."""
    sizes = [np.asarray(t.left).shape[0] for t in trees]
    roots = np.concatenate([[0], np.cumsum(sizes[:-1])]).astype(np.int64)

    def children(name: str) -> I64:
        kids = [np.asarray(getattr(t, name), dtype=np.int64) for t in trees]
        return np.concatenate(
            [np.where(k >= 0, k + r, -1) for k, r in zip(kids, roots, strict=True)]
        )

    def nodes(name: str, dtype: type) -> Any:
        return np.concatenate([np.asarray(getattr(t, name), dtype=dtype) for t in trees])

    categorical = start = bits = zero_missing = None
    if any(t.categories is not None for t in trees):
        flags: list[bool] = []
        words: list[int] = []
        offsets = [0]
        for t, size in zip(trees, sizes, strict=True):
            for cats in t.categories if t.categories is not None else [None] * size:
                flags.append(cats is not None)
                words.extend(_category_words(cats) if cats is not None else [])
                offsets.append(len(words))
        categorical = np.asarray(flags, dtype=np.bool_)
        start = np.asarray(offsets, dtype=np.int64)
        bits = np.asarray(words, dtype=np.uint32)
    if any(t.zero_missing is not None for t in trees):
        zero_missing = np.concatenate(
            [
                np.asarray(t.zero_missing if t.zero_missing is not None else [False] * size)
                for t, size in zip(trees, sizes, strict=True)
            ]
        ).astype(np.bool_)
    return TreeEnsemble(
        roots=roots,
        outputs=np.asarray([t.output for t in trees], dtype=np.int64),
        left=children("left"),
        right=children("right"),
        feature=nodes("feature", np.int64),
        threshold=nodes("threshold", threshold_dtype),
        default_left=nodes("default_left", np.bool_),
        cover=nodes("cover", np.float64),
        value=nodes("value", np.float64),
        n_features=n_features,
        n_outputs=n_outputs,
        left_if_equal=left_if_equal,
        categorical=categorical,
        category_start=start,
        category_bits=bits,
        zero_missing=zero_missing,
        truncate_negative_categories=truncate_negative_categories,
    )


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
    if not ens.plain:
        raise ValueError("categorical or zero-as-missing splits")
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


BLOCK = 32
"""Rows explained together: each leaf's table is read for all of them while it is in cache."""
SMALLEST_BLOCK = 4
"""Fewer rows go one by one: a block's bookkeeping costs more than it saves."""
PENDING_READS = 8192
"""Table rows located before they are read, per pass."""


@_compiled
def _goes_left(
    v: float, threshold: float, default_left: bool, left_if_equal: bool
) -> int:  # pragma: no cover  (compiled)
    if np.isnan(v):
        return 1 if default_left else 0
    if left_if_equal:
        return 1 if v <= threshold else 0
    return 1 if v < threshold else 0


@_compiled
def _explain_row(
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
    """One row: the latency path of a lone request."""
    goes_left = np.empty(feature.shape[0], dtype=np.int64)
    for node in range(feature.shape[0]):
        if feature[node] >= 0:
            goes_left[node] = _goes_left(
                x[feature[node]], threshold[node], default_left[node], left_if_equal
            )
    # Two passes: every leaf's table row first, then the reads. The rows are
    # scattered over megabytes, and reads whose addresses are all known can be in
    # flight together instead of one cache miss at a time.
    row_at = np.empty(n_slots.shape[0], dtype=np.int64)
    for leaf in range(n_slots.shape[0]):
        m = n_slots[leaf]
        t = (1 << m) - 1
        # Branch-free: which way a row goes is data, and mispredictions cost more
        # than the arithmetic.
        for s in range(step_start[leaf], step_start[leaf + 1]):
            t &= ~((goes_left[step_node[s]] ^ step_left[s]) << step_slot[s])
        row_at[leaf] = table_start[leaf] + t * m
    for leaf in range(n_slots.shape[0]):
        out = output[leaf]
        for j in range(n_slots[leaf]):
            phi[slot_feature[leaf, j], out] += table[row_at[leaf] + j]


@_compiled
def _explain_rows(
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
    """Blocks of rows, leaf by leaf: a leaf's table (at most a few KiB) is fetched once
    for the whole block, so a row costs a fraction of a lone one."""
    n_nodes, n_leaves = feature.shape[0], n_slots.shape[0]
    block = min(BLOCK, x.shape[0])
    goes_left = np.zeros((n_nodes, block), dtype=np.uint8)  # node-major: rows side by side
    chunk = max(64, PENDING_READS // block)
    row_at = np.empty((chunk, block), dtype=np.int64)
    t = np.empty(block, dtype=np.int64)
    for first in range(0, x.shape[0], block):
        rows = min(block, x.shape[0] - first)
        for node in range(n_nodes):
            if feature[node] >= 0:
                for i in range(rows):
                    goes_left[node, i] = _goes_left(
                        x[first + i, feature[node]],
                        threshold[node],
                        default_left[node],
                        left_if_equal,
                    )
        for lo in range(0, n_leaves, chunk):  # the two passes, as in _explain_row
            hi = min(lo + chunk, n_leaves)
            for leaf in range(lo, hi):
                m = n_slots[leaf]
                for i in range(rows):
                    t[i] = (1 << m) - 1
                for s in range(step_start[leaf], step_start[leaf + 1]):
                    node, left, slot = step_node[s], step_left[s], step_slot[s]
                    for i in range(rows):
                        t[i] &= ~((np.int64(goes_left[node, i]) ^ left) << slot)
                for i in range(rows):
                    row_at[leaf - lo, i] = table_start[leaf] + t[i] * m
            for leaf in range(lo, hi):
                out = output[leaf]
                for j in range(n_slots[leaf]):
                    f = slot_feature[leaf, j]
                    for i in range(rows):
                        phi[first + i, f, out] += table[row_at[leaf - lo, i] + j]


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
        # compared as the model compares them: float32, or float64 for float64 thresholds
        rows = np.ascontiguousarray(x, dtype=ens.threshold.dtype)
        phi = np.zeros((rows.shape[0], ens.n_features, ens.n_outputs))
        tables = (
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
        )
        if rows.shape[0] >= SMALLEST_BLOCK:
            _explain_rows(rows, *tables, phi)
        else:
            for i in range(rows.shape[0]):
                _explain_row(rows[i], *tables, phi[i])
        return phi
