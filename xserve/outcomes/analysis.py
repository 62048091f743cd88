"""Performance per version and versions compared, on decisions joined with outcomes.

Concept drift: a version whose metric is worse than its baseline by more than
``concept_drift_margin`` times the baseline is flagged. The baseline is the version's
deploy-time evaluation (``evaluation.json`` in its folder, ``{"metrics": {...}}``), else
the ``validation:`` metrics of its manifest.
Under ``min_outcomes`` pairs the status is ``insufficient_data``, never ``ok``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from xserve.errors import InvalidInput
from xserve.explainers.reasons import adverse_index
from xserve.monitoring.compare import (
    Comparison,
    bootstrap_test,
    delong_test,
    proportion_test,
)
from xserve.monitoring.performance import (
    Statistic,
    classifier_statistics,
    regressor_statistics,
    summarize,
)
from xserve.outcomes.pairs import Arm, Joined, Key
from xserve.repository.version import ModelVersion

__all__ = ["LOWER_IS_BETTER", "METRICS", "compare_arms", "performance_of", "read_baseline"]

EVALUATION_FILE = "evaluation.json"
LOWER_IS_BETTER = frozenset({"brier", "ece", "rmse", "mae", "adverse_rate"})
METRICS = ("auc", "accuracy", "brier", "ece", "rmse", "mae", "adverse_rate")
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Pairs:
    """One arm's decisions that have outcomes, as arrays."""

    keys: list[Key]
    probabilities: F64 | None
    """(n, classes) for a classifier."""
    labels: npt.NDArray[np.int64] | None
    """Outcome class indices, for a classifier."""
    predictions: F64 | None
    """Predicted values, for a regressor."""
    outcomes: F64 | None

    @property
    def n(self) -> int:
        return len(self.keys)

    def statistics(self) -> dict[str, Statistic]:
        if self.probabilities is not None and self.labels is not None:
            return classifier_statistics(self.probabilities, self.labels)
        assert self.predictions is not None and self.outcomes is not None
        return regressor_statistics(self.predictions, self.outcomes)


def _class_indices(model: ModelVersion) -> dict[str, int]:
    return {str(c): i for i, c in enumerate(model.classes or [])}


def pairs_of(arm: Arm, joined: Joined, model: ModelVersion, only: set[Key] | None = None) -> Pairs:
    """``arm``'s decisions with outcomes (of the keys in ``only``, if given), with each
    outcome read against ``model``'s classes."""
    regression = model.task == "regression"
    take = [
        i
        for i in joined.with_outcomes(arm)
        if (only is None or arm.keys[i] in only)
        and (regression or arm.probabilities[i] is not None)
    ]
    keys = [arm.keys[i] for i in take]
    if regression:
        values = [joined.outcomes[k] for k in keys]
        predictions = [arm.predictions[i] for i in take]
        ok = [
            j
            for j, (v, p) in enumerate(zip(values, predictions, strict=True))
            if _finite(v) and _finite(p)
        ]
        return Pairs(
            [keys[j] for j in ok],
            None,
            None,
            np.asarray([predictions[j] for j in ok], dtype=np.float64),
            np.asarray([values[j] for j in ok], dtype=np.float64),
        )
    index = _class_indices(model)
    width = len(model.classes or [])
    kept = [
        (k, i)
        for k, i in zip(keys, take, strict=True)
        if str(joined.outcomes[k]) in index and len(arm.probabilities[i] or []) == width
    ]
    return Pairs(
        [k for k, _ in kept],
        np.asarray([arm.probabilities[i] for _, i in kept], dtype=np.float64).reshape(-1, width),
        np.asarray([index[str(joined.outcomes[k])] for k, _ in kept], dtype=np.int64),
        None,
        None,
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_baseline(model: ModelVersion) -> dict[str, float] | None:
    """The version's deploy-time metrics (``evaluation.json``), else the manifest's
    ``validation:`` metrics, if it has either."""
    try:
        data = json.loads((model.path / EVALUATION_FILE).read_text(encoding="utf-8"))
        metrics = data.get("metrics") if isinstance(data, dict) else None
    except (OSError, ValueError):
        metrics = None
    if not isinstance(metrics, dict):
        metrics = model.manifest.validation
    if not metrics:
        return None
    return {k: float(v) for k, v in metrics.items() if k in METRICS and _finite(v)}


def _concept_drift(
    metrics: dict[str, Any], baseline: dict[str, float] | None, n: int, minimum: int, margin: float
) -> dict[str, Any]:
    status: Literal["insufficient_data", "no_baseline", "ok", "drift"]
    flagged: list[str] = []
    if n < minimum:
        status = "insufficient_data"
    elif not baseline:
        status = "no_baseline"
    else:
        for name, base in baseline.items():
            value = metrics.get(name, {}).get("value")
            if value is None:
                continue
            worse = value - base if name in LOWER_IS_BETTER else base - value
            if worse > margin * abs(base):
                flagged.append(name)
        status = "drift" if flagged else "ok"
    return {
        "status": status,
        "flagged": flagged,
        "margin": margin,
        "min_outcomes": minimum,
        "baseline": baseline,
    }


def performance_of(
    model: ModelVersion, arm: Arm | None, joined: Joined, minimum: int, margin: float
) -> dict[str, Any]:
    """One version's figures: n, each metric with its interval, concept-drift status."""
    decisions = len(arm.keys) if arm is not None else 0
    pairs = pairs_of(arm, joined, model) if arm is not None else None
    n = pairs.n if pairs is not None else 0
    metrics: dict[str, Any] = {}
    if pairs is not None and n > 0:
        metrics = {k: m.describe() for k, m in summarize(pairs.statistics(), n).items()}
    baseline = read_baseline(model)
    return {
        "version": model.version,
        "task": model.task,
        "decisions": decisions,
        "n": n,
        "metrics": metrics,
        "concept_drift": _concept_drift(metrics, baseline, n, minimum, margin),
    }


def _adverse_hits(arm: Arm, model: ModelVersion, keys: list[Key] | None) -> npt.NDArray[np.bool_]:
    if model.task == "regression" or not model.classes:
        raise InvalidInput("adverse_rate compares classifiers only")
    adverse = str(model.classes[adverse_index(model)])
    position = {k: i for i, k in enumerate(arm.keys)}
    chosen = range(len(arm.keys)) if keys is None else [position[k] for k in keys]
    return np.asarray([str(arm.predictions[i]) == adverse for i in chosen], dtype=np.bool_)


def compare_arms(
    metric: str, model: ModelVersion, a: Arm, b: Arm, joined: Joined
) -> tuple[Comparison, bool]:
    """``metric`` of version b against version a, and whether the arms were paired (a
    shadow scored the same decisions as the live version: compared on those)."""
    paired = a.shadow or b.shadow
    common: set[Key] | None = None
    if paired:
        common = set(a.keys) & set(b.keys)
        if not common:
            raise InvalidInput(f"versions {a.version} and {b.version} decided no request in common")
    if metric == "adverse_rate":
        keys = sorted(common) if common is not None else None
        return proportion_test(
            metric, _adverse_hits(a, model, keys), _adverse_hits(b, model, keys), paired
        ), paired
    pa, pb = pairs_of(a, joined, model, common), pairs_of(b, joined, model, common)
    if paired:  # the same decisions in the same order on both sides
        keep = set(pa.keys) & set(pb.keys)
        pa, pb = _restricted(pa, keep), _restricted(pb, keep)
    for arm, p in ((a, pa), (b, pb)):
        if p.n == 0:
            raise InvalidInput(f"version {arm.version} has no decision with an outcome")
    stats_a, stats_b = pa.statistics(), pb.statistics()
    if metric not in stats_a:
        raise InvalidInput(f"metric {metric!r} is not one of {sorted(stats_a)} for this model")
    if metric == "auc" and pa.probabilities is not None and pa.probabilities.shape[1] == 2:
        assert pb.probabilities is not None and pa.labels is not None and pb.labels is not None
        return delong_test(
            pa.probabilities[:, 1], pa.labels == 1, pb.probabilities[:, 1], pb.labels == 1, paired
        ), paired
    if metric == "accuracy" and pa.probabilities is not None:
        assert pb.probabilities is not None and pa.labels is not None and pb.labels is not None
        hits_a = pa.probabilities.argmax(axis=1) == pa.labels
        hits_b = pb.probabilities.argmax(axis=1) == pb.labels
        return proportion_test(metric, hits_a, hits_b, paired), paired
    return bootstrap_test(metric, stats_a[metric], pa.n, stats_b[metric], pb.n, paired), paired


def _restricted(p: Pairs, keep: set[Key]) -> Pairs:
    """``p`` limited to ``keep``, in key order (so two arms line up pair by pair)."""
    order = sorted(range(p.n), key=lambda i: p.keys[i])
    rows = [i for i in order if p.keys[i] in keep]

    def take(a: Any) -> Any:
        return None if a is None else a[rows]

    return Pairs(
        [p.keys[i] for i in rows],
        take(p.probabilities),
        take(p.labels),
        take(p.predictions),
        take(p.outcomes),
    )
