"""Performance of a model version on the decisions that have outcomes, with bootstrap
95% intervals.

Classifiers: n, AUC (one-vs-rest macro average for more than two classes), accuracy,
Brier score and expected calibration error (ECE, ten equal-width bins: of the positive
class's probability for two classes, of the top label's for more). Regressors: n, RMSE
and MAE. Every point estimate equals scikit-learn's on the same pairs.

The intervals are percentile intervals over ``BOOTSTRAP`` resamples drawn with a fixed
seed, so an answer does not change between two reads of the same pairs. A resample is a
vector of counts (how often each pair was drawn), and every metric here is written for
weighted pairs, so all resamples are computed at once with matrix products instead of
``BOOTSTRAP`` calls into scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "BOOTSTRAP",
    "ECE_BINS",
    "Metric",
    "Statistic",
    "bootstrap_weights",
    "classifier_statistics",
    "regressor_statistics",
    "summarize",
    "weighted_auc",
]

F64 = npt.NDArray[np.float64]
BOOTSTRAP = 1000
ECE_BINS = 10
SEED = 0


@dataclass(frozen=True)
class Metric:
    value: float | None
    low: float | None
    high: float | None

    def describe(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": [self.low, self.high]}


def bootstrap_weights(n: int, resamples: int = BOOTSTRAP, seed: int = SEED) -> F64:
    """(resamples, n) counts: row b says how often each pair is drawn in resample b."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def _metric(fn: Callable[[F64], F64], n: int, resamples: F64) -> Metric:
    """``fn`` maps (k, n) weights to k values; NaN (an undefined resample) is dropped."""
    value = float(fn(np.ones((1, n)))[0])
    if not np.isfinite(value):
        return Metric(None, None, None)
    draws = fn(resamples)
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return Metric(value, None, None)
    low, high = np.percentile(draws, [2.5, 97.5])
    return Metric(value, float(low), float(high))


def weighted_auc(score: F64, positive: npt.NDArray[np.bool_], weights: F64) -> F64:
    """ROC AUC of ``score`` for ``positive`` under each row of ``weights`` (k, n): the
    weighted share of (positive, negative) pairs ordered right, ties counting half, as
    scikit-learn's ``roc_auc_score`` with ``sample_weight``. NaN without both labels."""
    order = np.argsort(score, kind="mergesort")
    s, pos = score[order], positive[order]
    w = weights[:, order]
    # Groups of tied scores: a pair within a group counts half.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w_pos = np.add.reduceat(w * pos, starts, axis=1)
    w_neg = np.add.reduceat(w * ~pos, starts, axis=1)
    below = np.cumsum(w_neg, axis=1) - w_neg  # negatives scored strictly lower
    total_pos, total_neg = w_pos.sum(axis=1), w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (w_pos * (below + 0.5 * w_neg)).sum(axis=1) / (total_pos * total_neg)
    return np.where((total_pos > 0) & (total_neg > 0), auc, np.nan)


def _mean(values: F64) -> Callable[[F64], F64]:
    return lambda w: (w @ values) / w.sum(axis=1)


def _ece(confidence: F64, correct: F64) -> Callable[[F64], F64]:
    """Expected calibration error: sum over bins of (share of pairs) x |mean correct - mean
    confidence|, bins as ``sklearn.calibration.calibration_curve(strategy="uniform")``."""
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    bins = np.searchsorted(edges[1:-1], confidence)  # right-closed, as scikit-learn
    member = np.zeros((len(confidence), ECE_BINS))
    member[np.arange(len(confidence)), bins] = 1.0

    def fn(w: F64) -> F64:
        gap = np.abs(w @ (member * correct[:, None]) - w @ (member * confidence[:, None]))
        return np.asarray(gap.sum(axis=1) / w.sum(axis=1), dtype=np.float64)

    return fn


Statistic = Callable[[F64], F64]
"""Maps (k, n) weights over the pairs to k values of a metric (NaN where undefined)."""


def classifier_statistics(
    probabilities: F64, labels: npt.NDArray[np.int64]
) -> dict[str, Statistic]:
    """The metrics of ``probabilities`` (n, classes) against the outcomes' class indices."""
    n, classes = probabilities.shape
    onehot = np.eye(classes)[labels]
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    if classes == 2:
        p1 = probabilities[:, 1]
        positive = labels == 1

        def auc(w: F64) -> F64:
            return weighted_auc(p1, positive, w)

        brier = (p1 - positive) ** 2
        ece = _ece(p1, positive.astype(np.float64))
    else:
        every_class = all(0 < (labels == k).sum() < n for k in range(classes))

        def auc(w: F64) -> F64:
            if not every_class:  # as scikit-learn, which refuses a class with no outcome
                return np.full(len(w), np.nan)
            by_class = [weighted_auc(probabilities[:, k], labels == k, w) for k in range(classes)]
            return np.asarray(np.mean(by_class, axis=0), dtype=np.float64)

        brier = ((probabilities - onehot) ** 2).sum(axis=1)
        ece = _ece(probabilities.max(axis=1), correct)
    return {"auc": auc, "accuracy": _mean(correct), "brier": _mean(brier), "ece": ece}


def regressor_statistics(predictions: F64, outcomes: F64) -> dict[str, Statistic]:
    error = predictions - outcomes
    squared = _mean(error**2)
    return {"rmse": lambda w: np.sqrt(squared(w)), "mae": _mean(np.abs(error))}


def summarize(
    statistics: dict[str, Statistic], n: int, resamples: int = BOOTSTRAP
) -> dict[str, Metric]:
    """Each metric's value and bootstrap 95% interval (the same resamples for all)."""
    weights = bootstrap_weights(n, resamples)
    return {name: _metric(fn, n, weights) for name, fn in statistics.items()}
