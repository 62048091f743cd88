"""Decisions joined with their outcomes, per version, from the audit log.

A decision is one instance of a ``predict``/``infer`` record, or of a ``shadow`` record
(the same request, decided by the shadow version); it is keyed by (request id,
instance), so a live decision and its shadow share a key and can be paired. The
outcome in force for a key is the last one recorded. Decisions are read from the
period [since, until); their outcomes from ``since`` on, whenever they came.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xserve.audit import AuditSink, Query
from xserve.audit.reading import read_body
from xserve.outcomes.record import DECISION_KINDS, OUTCOME_KIND
from xserve.reports.traffic import records
from xserve.serving.shadow import SHADOW_KIND

__all__ = ["Arm", "Joined", "Key", "read_joined"]

Key = tuple[str, int]


@dataclass
class Arm:
    """One version's decisions in the period."""

    version: str
    keys: list[Key] = field(default_factory=list)
    predictions: list[Any] = field(default_factory=list)
    probabilities: list[list[float] | None] = field(default_factory=list)
    shadow: bool = False
    """Some decisions were shadow copies (answers never given)."""


@dataclass
class Joined:
    arms: dict[str, Arm] = field(default_factory=dict)
    outcomes: dict[Key, Any] = field(default_factory=dict)
    segments: dict[Key, dict[str, str]] = field(default_factory=dict)

    def with_outcomes(self, arm: Arm) -> list[int]:
        """Indices of ``arm``'s decisions that have an outcome."""
        return [i for i, key in enumerate(arm.keys) if key in self.outcomes]


def read_joined(sink: AuditSink, model: str, since: str | None, until: str | None) -> Joined:
    joined = Joined()
    for record in records(sink, Query(model=model, since=since)):
        body = read_body(record.body)
        if body is None:
            continue
        kind = body.get("kind")
        if kind == OUTCOME_KIND:
            key = (record.request_id, int(body.get("instance", 0)))
            joined.outcomes[key] = body.get("outcome")
            joined.segments[key] = body.get("segments") or {}
            continue
        if kind not in DECISION_KINDS and kind != SHADOW_KIND:
            continue
        if until is not None and record.time >= until:
            continue
        arm = joined.arms.setdefault(record.version, Arm(record.version))
        arm.shadow |= kind == SHADOW_KIND
        output = body.get("output") or {}
        predictions = output.get("predictions") or []
        probabilities = output.get("probabilities")
        for i, prediction in enumerate(predictions):
            arm.keys.append((record.request_id, i))
            arm.predictions.append(prediction)
            row = probabilities[i] if isinstance(probabilities, list) else None
            arm.probabilities.append(row if isinstance(row, list) else None)
    return joined
