"""A deploy-time evaluation: the new version and the serving one scored on the same
holdout, their metrics and differences, the stability of their explanations, and a gate.

The gate is a list of rules on the difference new - serving, such as ``auc>=-0.005``
(AUC may drop by at most 0.005) or ``brier<=0.01``. When every rule holds, the
evaluation is written to the new version's folder as ``evaluation.json``, and its
metrics become the version's baseline for concept drift (:mod:`xserve.outcomes.analysis`).
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from xserve.audit.record import timestamp
from xserve.errors import InvalidInput, XServeError
from xserve.explainers.reasons import adverse_index
from xserve.monitoring.performance import classifier_statistics, regressor_statistics, summarize
from xserve.outcomes.analysis import EVALUATION_FILE, METRICS
from xserve.repository.version import ModelVersion, frame_to_matrix, read_table

__all__ = ["Evaluation", "GateFailed", "Rule", "evaluate", "parse_rule"]

STABILITY_ROWS = 1000
"""Holdout rows explained for the explanation-stability figure (the first ones)."""
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_RULE = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|>|<)\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*$")


class GateFailed(XServeError):
    """A promotion gate rule does not hold: the version is not deployed."""

    status = 422
    code = "gate_failed"


@dataclass(frozen=True)
class Rule:
    metric: str
    op: str
    bound: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"

    def holds(self, difference: float) -> bool:
        return _OPS[self.op](difference, self.bound)


def parse_rule(text: str) -> Rule:
    """``auc>=-0.005``: a bound on the difference new - serving of one metric."""
    match = _RULE.match(text)
    if match is None or match.group(1) not in METRICS:
        raise InvalidInput(
            f"gate {text!r}: expected <metric><op><number>, e.g. 'auc>=-0.005', with a metric "
            f"of {list(METRICS)} and an op of {list(_OPS)}"
        )
    return Rule(match.group(1), match.group(2), float(match.group(3)))


@dataclass(frozen=True)
class Evaluation:
    holdout: dict[str, Any]
    metrics: dict[str, Any]
    serving: dict[str, Any] | None
    differences: dict[str, float]
    stability: float | None
    """Spearman correlation of the two versions' mean |attribution| per feature."""
    rules: list[dict[str, Any]]

    @property
    def passed(self) -> bool:
        return all(r["holds"] for r in self.rules)

    def to_json(self) -> dict[str, Any]:
        return {
            "time": timestamp(),
            "holdout": self.holdout,
            "metrics": {k: v["value"] for k, v in self.metrics.items()},
            "intervals": {k: v["ci95"] for k, v in self.metrics.items()},
            "serving": self.serving,
            "differences": self.differences,
            "explanation_stability": self.stability,
            "gate": self.rules,
            "passed": self.passed,
        }

    def write(self, folder: Path) -> Path:
        path = folder / EVALUATION_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path


def _labels(model: ModelVersion, values: Sequence[Any], column: str) -> npt.NDArray[np.int64]:
    index = {str(c): i for i, c in enumerate(model.classes or [])}
    out = []
    for row, value in enumerate(values):
        key = str(value.item() if hasattr(value, "item") else value)
        if key not in index and key.endswith(".0") and key[:-2] in index:
            key = key[:-2]  # a label column read as floats
        if key not in index:
            raise InvalidInput(
                f"holdout row {row + 1}: {column}={value!r} is not one of {model.classes}"
            )
        out.append(index[key])
    return np.asarray(out, dtype=np.int64)


def _scored(model: ModelVersion, x: npt.NDArray[np.float64], y: Sequence[Any], column: str) -> Any:
    outputs = np.asarray(model.runtime.predict(x), dtype=np.float64)
    if model.task == "regression":
        truth = np.asarray(y, dtype=np.float64)
        return summarize(regressor_statistics(outputs.reshape(-1), truth), len(truth))
    return summarize(classifier_statistics(outputs, _labels(model, y, column)), len(y))


def _importance(model: ModelVersion, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64] | None:
    """Mean |attribution| per feature of the adverse output, by the inline explainer."""
    if model.inline is None:
        return None
    values = model.inline.explain(x[:STABILITY_ROWS]).values
    k = adverse_index(model) if values.shape[2] > 1 else 0
    return np.asarray(np.abs(values[:, :, k]).mean(axis=0), dtype=np.float64)


def evaluate(
    new: ModelVersion, serving: ModelVersion | None, holdout: Path, label: str, rules: list[Rule]
) -> Evaluation:
    """Score ``new`` (and ``serving``) on ``holdout``; a rule needs a serving version."""
    table = read_table(holdout)
    if label not in table.columns:
        raise InvalidInput(f"holdout {holdout}: no label column {label!r}")
    y = table[label].tolist()
    x_new = frame_to_matrix(table, new.features, str(holdout))
    mine = {k: m.describe() for k, m in _scored(new, x_new, y, label).items()}
    theirs: dict[str, Any] | None = None
    differences: dict[str, float] = {}
    stability = None
    if serving is not None:
        x_old = frame_to_matrix(table, serving.features, str(holdout))
        theirs = {k: m.describe() for k, m in _scored(serving, x_old, y, label).items()}
        for name, figure in mine.items():
            old = theirs.get(name, {}).get("value")
            if figure["value"] is not None and old is not None:
                differences[name] = figure["value"] - old
        a, b = _importance(new, x_new), _importance(serving, x_old)
        if a is not None and b is not None and a.shape == b.shape and a.std() and b.std():
            stability = float(stats.spearmanr(a, b).statistic)
    checked = []
    for rule in rules:
        difference = differences.get(rule.metric)
        if serving is None or difference is None:
            why = "no serving version" if serving is None else f"no {rule.metric} for this model"
            raise InvalidInput(f"gate {rule}: cannot be checked ({why})")
        checked.append(
            {"rule": str(rule), "difference": difference, "holds": rule.holds(difference)}
        )
    digest = hashlib.sha256(holdout.read_bytes()).hexdigest()
    return Evaluation(
        {"file": holdout.name, "sha256": digest, "label": label, "rows": len(table)},
        mine,
        None if serving is None else {"version": serving.version, "metrics": theirs},
        differences,
        stability,
        checked,
    )
