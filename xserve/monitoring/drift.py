"""Drift of traffic against a version's background: PSI and the KS statistic per feature.

PSI (population stability index) compares the share of rows in each bin:
``sum((q - p) * ln(q / p))`` over bins cut at the background's deciles (each
value its own bin for categorical and boolean features, and missing values a
bin of their own), shares floored at ``EPSILON`` so that an empty bin counts
as rare rather than infinitely surprising. Bins are right-closed, so a value
equal to a decile falls in the bin that decile closes. The usual reading:
below 0.1 stable, 0.1 to 0.25 worth a look (``warn``), above 0.25 shifted
(``drift``). The two-sample Kolmogorov-Smirnov statistic (largest gap between
the two empirical distribution functions, missing values left out) and its
p-value come beside it; the status follows PSI alone, because with a large
window KS flags shifts too small to matter.

:class:`DriftMonitor` keeps, per loaded model version, the last
``XSERVE_DRIFT_WINDOW`` input rows the version scored. Requests only append
their matrix (no copy, no statistics); figures are computed when read.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from xserve.repository.manifest import Feature
from xserve.repository.version import ModelVersion

__all__ = [
    "BINS",
    "EPSILON",
    "MIN_ROWS",
    "PSI_DRIFT",
    "PSI_WARN",
    "DriftFigure",
    "DriftMonitor",
    "FeatureDrift",
    "bin_edges",
    "compare",
    "drift_figures",
    "ks",
    "psi",
    "status_of",
]

Array = npt.NDArray[np.float64]
Status = Literal["ok", "warn", "drift"]
Overall = Literal["insufficient_data", "no_reference", "ok", "warn", "drift"]

BINS = 10
EPSILON = 1e-4
PSI_WARN = 0.1
PSI_DRIFT = 0.25
MIN_ROWS = 30
"""Below this many traffic rows figures are given but no status: a handful of rows says
little, and a status on them would page someone for nothing."""
NOT_TRAFFIC = frozenset({"explain", "outcome"})
"""Record kinds that bring no new inputs: explanations re-read inputs already seen,
outcomes carry none."""


def bin_edges(reference: Array, discrete: bool = False, bins: int = BINS) -> Array:
    """Interior, right-closed bin edges: the background's quantiles, or each value for
    discrete features (the last bin also takes values above every one seen)."""
    ref = reference[~np.isnan(reference)]
    if ref.size == 0:
        return np.empty(0)
    if discrete:
        values: Array = np.unique(ref)[:-1]
        return values
    edges: Array = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    return edges


def _shares(values: Array, edges: Array) -> Array:
    missing = np.isnan(values)
    index = np.searchsorted(edges, values[~missing], side="left")
    counts = np.bincount(index, minlength=edges.size + 1).astype(np.float64)
    return np.append(counts, float(missing.sum())) / max(values.size, 1)


def psi(reference: Array, current: Array, edges: Array | None = None) -> float | None:
    """PSI of ``current`` against ``reference`` (None when either is empty)."""
    if reference.size == 0 or current.size == 0:
        return None
    if edges is None:
        edges = bin_edges(reference)
    p = np.maximum(_shares(reference, edges), EPSILON)
    q = np.maximum(_shares(current, edges), EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def ks(reference: Array, current: Array) -> tuple[float | None, float | None]:
    """Two-sample KS statistic and p-value, missing values left out."""
    ref = reference[~np.isnan(reference)]
    cur = current[~np.isnan(current)]
    if ref.size == 0 or cur.size == 0:
        return None, None
    result = stats.ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def status_of(value: float | None, rows: int) -> Status | None:
    if value is None or rows < MIN_ROWS:
        return None
    if value >= PSI_DRIFT:
        return "drift"
    return "warn" if value >= PSI_WARN else "ok"


def overall_status(features: Iterable[FeatureDrift], rows: int) -> Overall:
    """The worst feature status; under ``MIN_ROWS`` rows ``insufficient_data``, never
    ``ok``; ``no_reference`` without a background to compare with."""
    if rows < MIN_ROWS:
        return "insufficient_data"
    statuses = {f.status for f in features}
    if "drift" in statuses:
        return "drift"
    if "warn" in statuses:
        return "warn"
    return "ok" if "ok" in statuses else "no_reference"


@dataclass(frozen=True)
class FeatureDrift:
    psi: float | None
    ks: float | None
    ks_pvalue: float | None
    status: Status | None

    def to_dict(self) -> dict[str, Any]:
        return {"psi": self.psi, "ks": self.ks, "ks_pvalue": self.ks_pvalue, "status": self.status}


def _discrete(feature: Feature) -> bool:
    return feature.type in ("categorical", "boolean")


def compare(
    features: list[Feature], reference: Array | None, current: Array
) -> dict[str, FeatureDrift]:
    """Per-feature drift of the rows ``current`` against ``reference`` (both in feature
    order); null figures where there is nothing to compare."""
    out = {}
    rows = current.shape[0]
    for j, feature in enumerate(features):
        if reference is None or rows == 0:
            out[feature.name] = FeatureDrift(None, None, None, None)
            continue
        ref, cur = reference[:, j], current[:, j]
        value = psi(ref, cur, bin_edges(ref, _discrete(feature)))
        statistic, pvalue = ks(ref, cur)
        out[feature.name] = FeatureDrift(value, statistic, pvalue, status_of(value, rows))
    return out


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Window:
    chunks: deque[tuple[float, Array]] = field(default_factory=deque)
    rows: int = 0


@dataclass(frozen=True)
class DriftFigure:
    """One gauge sample: a feature's current PSI and KS statistic for a model version."""

    model: str
    version: str
    feature: str
    psi: float | None
    ks: float | None
    status: Status | None


_MONITORS: weakref.WeakSet[DriftMonitor] = weakref.WeakSet()


class DriftMonitor:
    """The last ``window`` input rows of each loaded model version, per server process."""

    def __init__(self, window: int = 1000) -> None:
        self.window = max(1, window)
        # Keyed by the loaded version itself: an unloaded version's rows go with it.
        self._windows: weakref.WeakKeyDictionary[ModelVersion, _Window] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        _MONITORS.add(self)

    def observe(self, model: ModelVersion, x: Array) -> None:
        """Add a scored batch: O(1) amortised, no copy (input matrices are never mutated)."""
        if x.ndim != 2 or x.shape[0] == 0:
            return
        if x.shape[0] > self.window:
            x = x[-self.window :]
        with self._lock:
            w = self._windows.get(model)
            if w is None:
                w = self._windows[model] = _Window()
            w.chunks.append((time.time(), x))
            w.rows += x.shape[0]
            # Drop whole chunks only while the rest still fills the window.
            while w.rows - w.chunks[0][1].shape[0] >= self.window:
                w.rows -= w.chunks.popleft()[1].shape[0]

    def rows(self, model: ModelVersion) -> tuple[Array, float | None, float | None]:
        """The window's rows (oldest first) and the times of its first and last batch."""
        with self._lock:
            w = self._windows.get(model)
            chunks = list(w.chunks) if w is not None else []
        if not chunks:
            return np.empty((0, len(model.features))), None, None
        x = np.concatenate([c for _, c in chunks])[-self.window :]
        return x, chunks[0][0], chunks[-1][0]

    def report(self, model: ModelVersion) -> dict[str, Any]:
        """The ``GET /v1/models/{m}/drift`` answer for ``model``."""
        x, since, until = self.rows(model)
        background = model.background
        features = compare(model.features, background, x)
        return {
            "model": model.name,
            "version": model.version,
            "window": {
                "rows": int(x.shape[0]),
                "size": self.window,
                "since": _iso(since),
                "until": _iso(until),
            },
            "reference": {"rows": None if background is None else int(background.shape[0])},
            "thresholds": {"psi_warn": PSI_WARN, "psi_drift": PSI_DRIFT, "min_rows": MIN_ROWS},
            "status": overall_status(features.values(), int(x.shape[0])),
            "features": {name: d.to_dict() for name, d in features.items()},
        }

    def versions(self) -> list[ModelVersion]:
        with self._lock:
            return list(self._windows.keys())

    def figures(self) -> list[DriftFigure]:
        """Figures of the windows holding at least ``MIN_ROWS`` rows: a gauge over fewer
        would chart noise as drift."""
        out = []
        for model in self.versions():
            x, _, _ = self.rows(model)
            if x.shape[0] < MIN_ROWS:
                continue
            for name, d in compare(model.features, model.background, x).items():
                out.append(DriftFigure(model.name, model.version, name, d.psi, d.ks, d.status))
        return out


def drift_figures() -> list[DriftFigure]:
    """Current PSI and KS of every model version with traffic, in this process: what the
    metrics code publishes as ``xserve_drift_psi`` and ``xserve_drift_ks`` gauges."""
    return [f for monitor in list(_MONITORS) for f in monitor.figures()]
