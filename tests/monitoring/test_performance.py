"""Performance figures and version comparisons against scikit-learn and scipy on real data
(scikit-learn's bundled data sets, models trained here)."""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats
from sklearn.calibration import calibration_curve
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    mean_absolute_error,
    roc_auc_score,
    root_mean_squared_error,
)
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from xserve.monitoring.compare import bootstrap_test, delong_test, proportion_test
from xserve.monitoring.performance import (
    bootstrap_weights,
    classifier_statistics,
    regressor_statistics,
    summarize,
    weighted_auc,
)

F64 = npt.NDArray[np.float64]


@cache
def binary() -> tuple[F64, F64, npt.NDArray[np.int64]]:
    """Two models' probabilities on the breast-cancer holdout, and its labels."""
    x, y = load_breast_cancer(return_X_y=True)
    x_fit, x_test, y_fit, y_test = train_test_split(x, y, test_size=0.5, random_state=0)
    good = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_fit, y_fit)
    weak = LogisticRegression(max_iter=1000).fit(x_fit[:, :2], y_fit)
    return good.predict_proba(x_test), weak.predict_proba(x_test[:, :2]), y_test


@cache
def multiclass() -> tuple[F64, npt.NDArray[np.int64]]:
    x, y = load_wine(return_X_y=True)
    x_fit, x_test, y_fit, y_test = train_test_split(x, y, test_size=0.5, random_state=0)
    model = LogisticRegression(max_iter=200).fit(x_fit[:, :3], y_fit)
    return model.predict_proba(x_test[:, :3]), y_test


def ece_reference(correct: F64, confidence: F64) -> float:
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=10)
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], confidence), minlength=10)
    counts = counts[counts > 0]
    return float(np.sum(counts / counts.sum() * np.abs(prob_true - prob_pred)))


def values(statistics: dict, n: int) -> dict[str, float]:
    return {name: float(fn(np.ones((1, n)))[0]) for name, fn in statistics.items()}


@pytest.mark.parametrize("rounded", [False, True], ids=["continuous", "tied"])
def test_binary_figures_equal_scikit_learn(rounded: bool) -> None:
    proba, _, y = binary()
    if rounded:  # many ties in the scores
        proba = np.round(proba, 1)
    got = values(classifier_statistics(proba, y), len(y))
    assert got["auc"] == pytest.approx(roc_auc_score(y, proba[:, 1]), abs=1e-12)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, proba.argmax(axis=1)), abs=1e-12)
    assert got["brier"] == pytest.approx(brier_score_loss(y, proba[:, 1]), abs=1e-12)
    assert got["ece"] == pytest.approx(ece_reference(y.astype(float), proba[:, 1]), abs=1e-12)


def test_multiclass_figures_equal_scikit_learn() -> None:
    proba, y = multiclass()
    got = values(classifier_statistics(proba, y), len(y))
    assert got["auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"), abs=1e-12)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, proba.argmax(axis=1)), abs=1e-12)
    assert got["brier"] == pytest.approx(brier_score_loss(y, proba), abs=1e-12)
    correct = (proba.argmax(axis=1) == y).astype(float)
    assert got["ece"] == pytest.approx(ece_reference(correct, proba.max(axis=1)), abs=1e-12)


def test_multiclass_auc_is_undefined_without_every_class() -> None:
    proba, y = multiclass()
    keep = y != 2
    summary = summarize(classifier_statistics(proba[keep], y[keep]), int(keep.sum()))
    assert summary["auc"].value is None and summary["accuracy"].value is not None


def test_regression_figures_equal_scikit_learn() -> None:
    x, y = load_diabetes(return_X_y=True)
    predictions = LinearRegression().fit(x[:200], y[:200]).predict(x[200:])
    got = values(regressor_statistics(predictions, y[200:]), len(predictions))
    assert got["rmse"] == pytest.approx(root_mean_squared_error(y[200:], predictions), abs=1e-9)
    assert got["mae"] == pytest.approx(mean_absolute_error(y[200:], predictions), abs=1e-9)


def test_each_bootstrap_draw_is_the_metric_of_its_resample() -> None:
    """Draw b is exactly scikit-learn's figure on the pairs resample b repeats."""
    proba, _, y = binary()
    proba = np.round(proba, 2)
    statistics = classifier_statistics(proba, y)
    weights = bootstrap_weights(len(y), resamples=30)
    for name, reference in (
        ("auc", lambda yy, pp: roc_auc_score(yy, pp[:, 1])),
        ("brier", lambda yy, pp: brier_score_loss(yy, pp[:, 1])),
        ("accuracy", lambda yy, pp: accuracy_score(yy, pp.argmax(axis=1))),
    ):
        draws = statistics[name](weights)
        for b in range(len(weights)):
            take = np.repeat(np.arange(len(y)), weights[b].astype(int))
            assert draws[b] == pytest.approx(reference(y[take], proba[take]), abs=1e-12), name


def test_intervals_hold_the_value_and_are_reproducible() -> None:
    proba, _, y = binary()
    first = summarize(classifier_statistics(proba, y), len(y))
    again = summarize(classifier_statistics(proba, y), len(y))
    assert first == again
    for metric in first.values():
        assert metric.value is not None and metric.low is not None and metric.high is not None
        assert metric.low <= metric.value <= metric.high
    assert first["auc"].high - first["auc"].low < 0.05  # 285 pairs: a narrow interval


def test_weighted_auc_without_both_labels_is_nan() -> None:
    assert np.isnan(weighted_auc(np.array([0.1, 0.9]), np.array([True, True]), np.ones((1, 2))))[0]


# -- comparisons --------------------------------------------------------------------------


def _psi(x: F64, y: F64) -> F64:
    return (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])


def _brute_components(score: F64, positive: npt.NDArray[np.bool_]) -> tuple[F64, F64]:
    psi = _psi(score[positive], score[~positive])
    return psi.mean(axis=1), psi.mean(axis=0)


def test_delong_unpaired_equals_its_definition() -> None:
    good, weak, y = binary()
    a, b = np.round(good[:140, 1], 2), weak[140:, 1]
    ya, yb = y[:140] == 1, y[140:] == 1
    result = delong_test(a, ya, b, yb)
    var = 0.0
    for score, positive in ((a, ya), (b, yb)):
        v10, v01 = _brute_components(score, positive)
        var += np.var(v10, ddof=1) / len(v10) + np.var(v01, ddof=1) / len(v01)
    assert result.a == pytest.approx(roc_auc_score(ya, a), abs=1e-12)
    assert result.b == pytest.approx(roc_auc_score(yb, b), abs=1e-12)
    z = (result.b - result.a) / np.sqrt(var)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    assert result.high - result.low == pytest.approx(2 * 1.959963984540054 * np.sqrt(var))
    assert (result.n_a, result.n_b) == (140, len(y) - 140)


def test_delong_paired_equals_its_definition() -> None:
    good, weak, y = binary()
    positive = y == 1
    result = delong_test(good[:, 1], positive, weak[:, 1], positive, paired=True)
    a10, a01 = _brute_components(good[:, 1], positive)
    b10, b01 = _brute_components(weak[:, 1], positive)
    var = np.var(a10 - b10, ddof=1) / len(a10) + np.var(a01 - b01, ddof=1) / len(a01)
    z = (result.b - result.a) / np.sqrt(var)
    assert result.test == "delong_paired" and result.difference < 0
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    same = delong_test(good[:, 1], positive, good[:, 1], positive, paired=True)
    assert same.difference == 0 and same.p_value == 1.0


def test_two_proportions_equal_a_hand_computation() -> None:
    hits_a = np.array([True] * 60 + [False] * 40)
    hits_b = np.array([True] * 45 + [False] * 55)
    result = proportion_test("accuracy", hits_a, hits_b)
    pooled = 105 / 200
    z = (0.45 - 0.60) / np.sqrt(pooled * (1 - pooled) * (2 / 100))
    assert result.p_value == pytest.approx(2 * stats.norm.cdf(-abs(z)), rel=1e-12)
    half = 1.959963984540054 * np.sqrt(0.6 * 0.4 / 100 + 0.45 * 0.55 / 100)
    assert (result.low, result.high) == pytest.approx((-0.15 - half, -0.15 + half))


def test_paired_rates_use_mcnemars_exact_test() -> None:
    hits_a = np.array([True] * 50 + [True] * 12 + [False] * 4 + [False] * 34)
    hits_b = np.array([True] * 50 + [False] * 12 + [True] * 4 + [False] * 34)
    result = proportion_test("accuracy", hits_a, hits_b, paired=True)
    assert result.test == "mcnemar_exact"
    assert result.p_value == pytest.approx(stats.binomtest(12, 16, 0.5).pvalue, rel=1e-12)
    assert result.difference == pytest.approx(-0.08)


def test_bootstrap_comparison_of_a_version_with_itself_and_a_worse_one() -> None:
    good, weak, y = binary()
    n = len(y)
    brier_good = classifier_statistics(good, y)["brier"]
    brier_weak = classifier_statistics(weak, y)["brier"]
    same = bootstrap_test("brier", brier_good, n, brier_good, n, paired=True)
    assert same.difference == 0 and same.low == same.high == 0 and same.p_value == 1.0
    worse = bootstrap_test("brier", brier_good, n, brier_weak, n, paired=True)
    assert worse.difference == pytest.approx(
        brier_score_loss(y, weak[:, 1]) - brier_score_loss(y, good[:, 1])
    )
    assert worse.low > 0 and worse.p_value < 0.01
