"""The figures of a compliance report, computed from a model version and its traffic."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from xserve.explainers.build import ADDITIVITY_RTOL
from xserve.explainers.reasons import adverse_index
from xserve.monitoring.drift import FeatureDrift, bin_edges, ks, psi, status_of
from xserve.reports.traffic import Explained, ModelTraffic
from xserve.repository.version import ModelVersion
from xserve.runtimes.base import Matrix

__all__ = [
    "CHUNK",
    "Chunks",
    "Fidelity",
    "ReasonFrequency",
    "Shift",
    "adverse_scores",
    "agreement",
    "fidelity",
    "mean_abs_shap",
    "reason_frequencies",
    "shift",
]

Array = npt.NDArray[np.float64]
Chunks = Callable[[Iterable[int], int], Iterable[int]]
CHUNK = 512


def adverse_scores(model: ModelVersion, outputs: Matrix) -> Array:
    """The adverse class's probability per row (the value itself for a regressor)."""
    if model.task == "regression":
        return np.asarray(outputs, dtype=np.float64).reshape(-1)
    return np.asarray(outputs[:, adverse_index(model)], dtype=np.float64)


def mean_abs_shap(model: ModelVersion, x: Matrix, chunks: Chunks) -> Array | None:
    """Mean |attribution| per feature of the adverse output (the one reason codes rank) by
    the version's inline explainer; None without one or without rows."""
    if model.inline is None or x.shape[0] == 0:
        return None
    total = np.zeros(len(model.features))
    output = adverse_index(model)
    for start in chunks(range(0, x.shape[0], CHUNK), x.shape[0]):
        values = model.inline.explain(x[start : start + CHUNK]).values[:, :, output]
        total += np.abs(values).sum(axis=0)
    result: Array = total / x.shape[0]
    return result


@dataclass(frozen=True)
class ReasonFrequency:
    feature: str
    reason: str
    listed: int
    """Explained decisions that listed this reason."""
    principal: int
    """... as their first (principal) reason."""


def reason_frequencies(reasons: list[list[dict[str, Any]]]) -> list[ReasonFrequency]:
    """How often each feature was given as a reason, most frequent first."""
    listed: Counter[str] = Counter()
    principal: Counter[str] = Counter()
    text: dict[str, str] = {}
    for codes in reasons:
        seen = set()
        for i, code in enumerate(codes):
            feature = str(code.get("feature"))
            text.setdefault(feature, str(code.get("reason", feature)))
            if feature not in seen:
                listed[feature] += 1
                seen.add(feature)
            if i == 0:
                principal[feature] += 1
    order = sorted(listed, key=lambda f: (-listed[f], f))
    return [ReasonFrequency(f, text[f], listed[f], principal[f]) for f in order]


@dataclass
class Fidelity:
    """Per explanation method: additivity residuals recomputed against the model, and the
    local fit scores that LIME records."""

    method: str
    output: str
    count: int = 0
    checked: int = 0
    residuals: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    note: str | None = None

    @property
    def max_residual(self) -> float | None:
        return max(self.residuals) if self.residuals else None

    @property
    def mean_residual(self) -> float | None:
        return float(np.mean(self.residuals)) if self.residuals else None

    @property
    def within_tolerance(self) -> int:
        return sum(r <= ADDITIVITY_RTOL for r in self.residuals)


def _class_index(model: ModelVersion, label: Any) -> int:
    if model.task == "regression" or not model.classes:
        return 0
    names = [str(c) for c in model.classes]
    return names.index(str(label)) if str(label) in names else adverse_index(model)


def _model_output(model: ModelVersion, space: str, x: Matrix) -> Matrix | None:
    """The model's own output (rows, outputs) in an explanation's output space."""
    if model.inline is not None and model.inline.output == space:
        return model.inline.model_output(x)
    if space in ("probability", "value"):
        out = np.asarray(model.runtime.predict(x), dtype=np.float64)
        return out.reshape(-1, 1) if out.ndim == 1 else out
    return None


def fidelity(model: ModelVersion, explained: list[Explained]) -> list[Fidelity]:
    """Recompute ``base_value + sum(values)`` against the model for every recorded additive
    explanation (rows with inputs recorded as digests cannot be recomputed)."""
    groups: dict[tuple[str, str], Fidelity] = {}
    pending: dict[tuple[str, str], list[Explained]] = defaultdict(list)
    for item in explained:
        e = item.explanation
        method, output = str(e.get("method", "?")), str(e.get("output", "-"))
        group = groups.setdefault((method, output), Fidelity(method, output))
        group.count += 1
        if isinstance(e.get("score"), int | float):
            group.scores.append(float(e["score"]))
        additive = isinstance(e.get("values"), dict) and "base_value" in e and method != "lime"
        if additive and not item.redacted:
            pending[(method, output)].append(item)
    names = model.feature_names
    for key, items in pending.items():
        group = groups[key]
        x = np.asarray([i.x for i in items], dtype=np.float64)
        expected = _model_output(model, key[1], x)
        if expected is None:
            group.note = f"the model's {key[1]} output cannot be recomputed for this version"
            continue
        for row, item in enumerate(items):
            e = item.explanation
            values = [e["values"].get(n) for n in names]
            if any(v is None for v in values):
                continue
            total = float(e["base_value"]) + math.fsum(float(v) for v in values)
            column = min(_class_index(model, e.get("class")), expected.shape[1] - 1)
            f = float(expected[row, column])
            group.residuals.append(abs(total - f) / max(abs(f), 1.0))
            group.checked += 1
    return sorted(groups.values(), key=lambda g: (g.method, g.output))


@dataclass(frozen=True)
class Shift:
    """One distribution against a reference: PSI (reference deciles), KS and the means."""

    drift: FeatureDrift
    reference_mean: float | None
    current_mean: float | None
    reference_rows: int
    current_rows: int


def _mean(a: Array) -> float | None:
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else None


def shift(reference: Array, current: Array) -> Shift:
    value = psi(reference, current, bin_edges(reference)) if current.size else None
    statistic, pvalue = ks(reference, current)
    return Shift(
        FeatureDrift(value, statistic, pvalue, status_of(value, current.size)),
        _mean(reference),
        _mean(current),
        int(reference.size),
        int(current.size),
    )


def agreement(traffic: ModelTraffic, other: str) -> tuple[int, int]:
    """Decisions made by both this version and ``other`` on the same request (shadow
    copies, replays), and how many of them agreed."""
    both = agreed = 0
    for by_version in traffic.outcomes.values():
        mine, theirs = by_version.get(traffic.version), by_version.get(other)
        if mine is None or theirs is None:
            continue
        for a, b in zip(mine, theirs, strict=False):
            both += 1
            agreed += a == b
    return both, agreed
