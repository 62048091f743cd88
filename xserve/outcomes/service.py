"""Recording outcomes: each one resolved against its decision record, checked, and
appended to the audit chain.

An item is refused, alone, when its request id has no decision, its instance is not
one of the request's, or its outcome is not one of the model's classes (a regressor's:
not a finite number); nothing of a refused item is stored. An item that repeats the
outcome and segments already in force for its decision records nothing, so sending
(or importing) the same outcomes twice changes nothing.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
import numpy as np

from xserve.audit.base import MAX_PAGE, Query
from xserve.audit.entry import personal_digest
from xserve.audit.log import AuditLog
from xserve.audit.reading import read_body
from xserve.audit.record import plain, timestamp
from xserve.errors import (
    AuditDisabled,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
)
from xserve.outcomes.analysis import METRICS, compare_arms, performance_of
from xserve.outcomes.gauges import publish
from xserve.outcomes.pairs import Joined, read_joined
from xserve.outcomes.record import DECISION_KINDS, OUTCOME_KIND, Observed, Scalar
from xserve.repository.repository import ModelRepository
from xserve.repository.version import ModelVersion

__all__ = [
    "OutcomeItem",
    "OutcomeService",
    "OutcomesBody",
    "Recorded",
    "Refusal",
    "label_of",
]

log = logging.getLogger(__name__)
MAX_SEGMENTS = 16

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Value = Annotated[str, msgspec.Meta(max_length=256)] | int | float | bool


class OutcomeItem(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    outcome: Value
    instance: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    """Which of the request's instances (rows) the outcome is for."""
    segments: Annotated[dict[Name, Value], msgspec.Meta(max_length=MAX_SEGMENTS)] | None = None
    """Attributes the model does not use, e.g. a group for fair-lending figures."""


class OutcomesBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    outcomes: list[OutcomeItem]


class Refusal(msgspec.Struct, frozen=True):
    index: int
    request_id: str
    reason: str


class Recorded(msgspec.Struct, frozen=True):
    accepted: int
    """Outcomes appended to the audit chain."""
    unchanged: int
    """Outcomes already in force for their decision: nothing recorded."""
    refused: list[Refusal]


def _number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_)


def label_of(model: ModelVersion, value: Any) -> Scalar:
    """``value`` as the model's own class label (matched as text, numbers by value), or a
    regressor's finite number; InvalidInput otherwise."""
    if model.task == "regression":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"outcome {value!r} is not a number (the model is a regressor)")
        if not math.isfinite(value):
            raise InvalidInput(f"outcome {value!r} is not finite")
        return float(value)
    for label in model.classes or []:
        if str(label) == str(value) or (_number(label) and _number(value) and label == value):
            return label  # type: ignore[no-any-return]
    raise InvalidInput(f"outcome {value!r} is not one of the classes {model.classes}")


class OutcomeService:
    def __init__(
        self,
        log: AuditLog | None,
        repository: ModelRepository,
        min_outcomes: int = 30,
        concept_drift_margin: float = 0.05,
        max_items: int = 10_000,
    ) -> None:
        self.log = log
        self.max_items = max_items
        self.repository = repository
        self.min_outcomes = min_outcomes
        self.margin = concept_drift_margin

    def performance(
        self, name: str, version: str | None, since: str | None, until: str | None
    ) -> dict[str, Any]:
        """Blocking: figures of each version of ``name`` (or the given one) on the decisions
        of [since, until) that have outcomes."""
        log = self._log()
        versions = [version] if version is not None else self._versions(name)
        models = [self.repository.get(name, v) for v in versions]
        joined = read_joined(log.sink, name, since, until)
        report = {
            "model": name,
            "since": since,
            "until": until,
            "versions": [self._figures(m, joined) for m in models],
        }
        publish(report)
        return report

    def refresh(self, window: float) -> None:
        """Blocking: recompute the figures of every model over the last ``window`` seconds,
        for the ``xserve_performance`` gauges; a model that fails is skipped (logged)."""
        if self.log is None:
            return
        since = timestamp(datetime.now(UTC) - timedelta(seconds=window))
        for name in self.repository.names():
            try:
                self.performance(name, None, since, None)
            except Exception:  # one model's figures must not stop the others'
                log.exception("performance figures of %s failed", name)

    def compare(
        self, name: str, a: str, b: str, metric: str, since: str | None, until: str | None
    ) -> dict[str, Any]:
        """Blocking: ``metric`` of version b against version a, with its test."""
        if metric not in METRICS:
            raise InvalidInput(f"metric: {metric!r} is not one of {list(METRICS)}")
        log = self._log()
        model = self.repository.get(name, b if b in self._versions(name) else None)
        joined = read_joined(log.sink, name, since, until)
        arms = []
        for v in (a, b):
            arm = joined.arms.get(v)
            if arm is None:
                raise InvalidInput(f"version {v!r} of {name!r} recorded no decision in the period")
            arms.append(arm)
        comparison, paired = compare_arms(metric, model, arms[0], arms[1], joined)
        return {"model": name, "a": a, "b": b, "paired": paired, **comparison.describe()}

    def _figures(self, model: ModelVersion, joined: Joined) -> dict[str, Any]:
        arm = joined.arms.get(model.version)
        return performance_of(model, arm, joined, self.min_outcomes, self.margin)

    def _versions(self, name: str) -> list[str]:
        return [e.version for e in self.repository.versions(name) if e.model is not None]

    def _log(self) -> AuditLog:
        if self.log is None:
            raise AuditDisabled("outcomes are kept in the audit log, which is off")
        return self.log

    def record(self, items: Sequence[OutcomeItem], caller: str | None) -> Recorded:
        """Blocking: resolve, check and record ``items``; refused ones are listed."""
        log = self._log()
        if len(items) > self.max_items:
            raise PayloadTooLarge(f"outcomes: {len(items)} items, more than {self.max_items}")
        accepted: list[Observed] = []
        refused: list[Refusal] = []
        unchanged = 0
        for index, item in enumerate(items):
            try:
                observed = self._resolve(log, item, caller)
            except (InvalidInput, ModelNotFound, ModelNotReady) as exc:
                refused.append(Refusal(index, item.request_id, exc.message))
                continue
            if observed is None:
                unchanged += 1
            else:
                accepted.append(observed)
        if accepted:
            for error in log.commit(accepted):
                if error is not None:
                    raise error
        return Recorded(len(accepted), unchanged, refused)

    def _resolve(self, log: AuditLog, item: OutcomeItem, caller: str | None) -> Observed | None:
        decision: tuple[int, dict[str, Any]] | None = None
        in_force: dict[str, Any] | None = None
        for record in log.query(Query(request_id=item.request_id, limit=MAX_PAGE)):
            body = read_body(record.body)
            if body is None:
                continue
            kind = body.get("kind")
            if kind in DECISION_KINDS and decision is None:
                decision = (record.seq, body)
            elif kind == OUTCOME_KIND and body.get("instance") == item.instance:
                in_force = body  # records come in sequence order: the last one wins
        if decision is None:
            raise InvalidInput(f"unknown request_id {item.request_id!r}: no decision under it")
        seq, body = decision
        count = len(body.get("input") or [])
        if item.instance >= count:
            raise InvalidInput(
                f"instance {item.instance} is not one of the request's {count} (0 to {count - 1})"
            )
        name, version = str(body.get("model")), str(body.get("version"))
        model = self._model(name, version)
        observed = Observed(
            request_id=item.request_id,
            instance=item.instance,
            model=name,
            version=version,
            decision_seq=seq,
            outcome=label_of(model, item.outcome),
            caller=caller,
            segments=dict(item.segments) if item.segments else None,
        )
        if in_force is not None and self._same(in_force, observed, log.digest_key):
            return None
        return observed

    def _model(self, name: str, version: str) -> ModelVersion:
        """The decision's version, or (once it left the repository) the model's serving one:
        its classes judge the outcome."""
        try:
            return self.repository.get(name, version)
        except (ModelNotFound, ModelNotReady):
            return self.repository.get(name)

    @staticmethod
    def _same(in_force: dict[str, Any], observed: Observed, key: bytes) -> bool:
        segments = {k: personal_digest(v, key) for k, v in (observed.segments or {}).items()}
        # As JSON text: 1 and 1.0 and true are different outcomes.
        same = json.dumps(in_force.get("outcome")) == json.dumps(plain(observed.outcome))
        return same and (in_force.get("segments") or {}) == segments
