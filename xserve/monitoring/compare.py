"""Two versions compared on one metric: the difference (b - a), its 95% interval, a
p-value and n per arm.

The arms are independent samples under split traffic (each decision met one version)
and paired under shadow traffic (both versions scored the same decisions); each test
comes in both forms:

- AUC: DeLong's test (DeLong, DeLong and Clarke-Pearson 1988), from the structural
  components computed with midranks (Sun and Xu 2014); paired, with their covariance.
- rates (accuracy, adverse-decision rate): the two-proportion z-test with a pooled
  standard error and a Wald interval; paired, McNemar's exact test on the discordant
  pairs.
- anything else (Brier, ECE, RMSE, MAE): the bootstrap, resampling the arms
  independently, or the pairs together; the p-value is the two-sided share of
  resampled differences on the far side of zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from xserve.monitoring.performance import BOOTSTRAP, Statistic, bootstrap_weights

__all__ = ["Comparison", "bootstrap_test", "delong_test", "proportion_test"]

F64 = npt.NDArray[np.float64]
Z95 = float(stats.norm.ppf(0.975))


@dataclass(frozen=True)
class Comparison:
    metric: str
    test: str
    a: float
    b: float
    difference: float
    low: float
    high: float
    p_value: float
    n_a: int
    n_b: int

    def describe(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "test": self.test,
            "a": self.a,
            "b": self.b,
            "difference": self.difference,
            "ci95": [self.low, self.high],
            "p_value": self.p_value,
            "n": {"a": self.n_a, "b": self.n_b},
        }


def _normal(
    metric: str, test: str, a: float, b: float, var: float, n: tuple[int, int]
) -> Comparison:
    diff = b - a
    se = float(np.sqrt(max(var, 0.0)))
    p = float(2 * stats.norm.sf(abs(diff) / se)) if se > 0 else (1.0 if diff == 0 else 0.0)
    return Comparison(metric, test, a, b, diff, diff - Z95 * se, diff + Z95 * se, p, *n)


def _components(score: F64, positive: npt.NDArray[np.bool_]) -> tuple[F64, F64]:
    """DeLong's structural components V10 (one per positive) and V01 (one per negative):
    the share of the other label each one is ordered right against, ties half."""
    x, y = score[positive], score[~positive]
    m, n = len(x), len(y)
    ranks = stats.rankdata(np.concatenate([x, y]))  # midranks
    v10 = (ranks[:m] - stats.rankdata(x)) / n
    v01 = 1.0 - (ranks[m:] - stats.rankdata(y)) / m
    return v10, v01


def _check_labels(positive: npt.NDArray[np.bool_], arm: str) -> None:
    if positive.all() or not positive.any():
        raise ValueError(f"arm {arm} needs outcomes of both labels for an AUC")


def delong_test(
    score_a: F64,
    positive_a: npt.NDArray[np.bool_],
    score_b: F64,
    positive_b: npt.NDArray[np.bool_],
    paired: bool = False,
) -> Comparison:
    """AUC of b against a. Paired: the same rows, so ``positive_a`` is ``positive_b``."""
    _check_labels(positive_a, "a")
    _check_labels(positive_b, "b")
    a10, a01 = _components(score_a, positive_a)
    b10, b01 = _components(score_b, positive_b)
    auc_a, auc_b = float(a10.mean()), float(b10.mean())
    n = (len(score_a), len(score_b))
    if not paired:
        var = sum(float(np.var(v, ddof=1)) / len(v) for v in (a10, a01, b10, b01))
        return _normal("auc", "delong", auc_a, auc_b, var, n)
    s10 = np.cov(np.vstack([a10, b10]))
    s01 = np.cov(np.vstack([a01, b01]))
    var = float(
        (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / len(a10)
        + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / len(a01)
    )
    return _normal("auc", "delong_paired", auc_a, auc_b, var, n)


def proportion_test(
    metric: str, hits_a: npt.NDArray[np.bool_], hits_b: npt.NDArray[np.bool_], paired: bool = False
) -> Comparison:
    """A rate (share of True) of b against a."""
    n_a, n_b = len(hits_a), len(hits_b)
    p_a, p_b = float(hits_a.mean()), float(hits_b.mean())
    diff = p_b - p_a
    if not paired:
        pooled = (hits_a.sum() + hits_b.sum()) / (n_a + n_b)
        se0 = float(np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b)))
        p = float(2 * stats.norm.sf(abs(diff) / se0)) if se0 > 0 else float(diff == 0)
        se = float(np.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b))
        return Comparison(
            metric,
            "two_proportion_z",
            p_a,
            p_b,
            diff,
            diff - Z95 * se,
            diff + Z95 * se,
            p,
            n_a,
            n_b,
        )
    only_a = int((hits_a & ~hits_b).sum())
    only_b = int((hits_b & ~hits_a).sum())
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)
    se = float(np.sqrt(max(discordant - (only_b - only_a) ** 2 / n_a, 0.0))) / n_a
    return Comparison(
        metric, "mcnemar_exact", p_a, p_b, diff, diff - Z95 * se, diff + Z95 * se, p, n_a, n_b
    )


def bootstrap_test(
    metric: str,
    stat_a: Statistic,
    n_a: int,
    stat_b: Statistic,
    n_b: int,
    paired: bool = False,
    resamples: int = BOOTSTRAP,
) -> Comparison:
    a = float(stat_a(np.ones((1, n_a)))[0])
    b = float(stat_b(np.ones((1, n_b)))[0])
    weights_a = bootstrap_weights(n_a, resamples, seed=1)
    weights_b = weights_a if paired else bootstrap_weights(n_b, resamples, seed=2)
    draws = stat_b(weights_b) - stat_a(weights_a)
    draws = draws[np.isfinite(draws)]
    low, high = np.percentile(draws, [2.5, 97.5])
    p = float(min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean())))
    test = "paired_bootstrap" if paired else "bootstrap"
    return Comparison(metric, test, a, b, b - a, float(low), float(high), p, n_a, n_b)
