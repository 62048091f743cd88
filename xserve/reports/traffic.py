"""Reading one model's decisions in a period from the audit log into per-version arrays.

Every record of the model counts (any kind, any version); records whose kind
brings new inputs (``predict``, ``infer``, shadow copies... anything but
``explain``) are *traffic*: their inputs feed drift and importance, their
outputs the prediction distribution. Recorded explanations and reason codes
of every kind feed the reason-code frequencies and the fidelity checks.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xserve.audit import AuditSink, Query, Record
from xserve.audit.base import MAX_PAGE
from xserve.audit.reading import read_body
from xserve.monitoring.drift import NOT_TRAFFIC
from xserve.repository.manifest import Feature
from xserve.runtimes.base import Matrix

__all__ = ["Explained", "ModelTraffic", "VersionTraffic", "encode_row", "read_traffic", "records"]


def records(sink: AuditSink, query: Query) -> Iterator[Record]:
    """Every record matching ``query``, page by page in sequence order."""
    after = query.after
    while True:
        page = sink.query(
            Query(
                since=query.since,
                until=query.until,
                model=query.model,
                version=query.version,
                request_id=query.request_id,
                after=after,
                limit=MAX_PAGE,
            )
        )
        yield from page
        if len(page) < MAX_PAGE:
            return
        after = page[-1].seq


def encode_row(features: list[Feature], row: dict[str, Any]) -> tuple[list[float], bool]:
    """A recorded input back in the model's encoding; NaN where missing or recorded only as a
    digest (personal data), and whether any value was such a digest."""
    out, redacted = [], False
    for f in features:
        v = row.get(f.name)
        if isinstance(v, dict):  # {"digest": ...}
            out.append(math.nan)
            redacted = True
        elif v is None:
            out.append(math.nan)
        elif isinstance(v, str) and f.categories:
            out.append(float(f.categories.index(v)) if v in f.categories else math.nan)
        elif isinstance(v, bool | int | float):
            out.append(float(v))
        else:
            out.append(math.nan)
    return out, redacted


@dataclass(frozen=True)
class Explained:
    """One recorded explanation, with the input it explains."""

    kind: str
    x: list[float]
    redacted: bool
    explanation: dict[str, Any]


@dataclass
class VersionTraffic:
    version: str
    records: int = 0
    decisions: int = 0
    """Instances in traffic records."""
    kinds: Counter[str] = field(default_factory=Counter)
    callers: Counter[str] = field(default_factory=Counter)
    first: str | None = None
    last: str | None = None
    labels: Counter[str] = field(default_factory=Counter)
    scores: list[float] = field(default_factory=list)
    """Each traffic decision's adverse-class probability (or regression value)."""


@dataclass
class ModelTraffic:
    """The model's records in the period; inputs and explanations for the report version."""

    version: str
    features: list[Feature]
    versions: dict[str, VersionTraffic] = field(default_factory=dict)
    rows: list[list[float]] = field(default_factory=list)
    redacted: list[bool] = field(default_factory=list)
    explained: list[Explained] = field(default_factory=list)
    reasons: list[list[dict[str, Any]]] = field(default_factory=list)
    """Recorded reason codes, one list per explained instance."""
    outcomes: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """request id -> version -> predicted labels: decisions two versions made on one request."""

    @property
    def this(self) -> VersionTraffic:
        return self.versions.get(self.version) or VersionTraffic(self.version)

    def matrix(self) -> Matrix:
        if not self.rows:
            return np.empty((0, len(self.features)))
        return np.asarray(self.rows, dtype=np.float64)

    def _add_version(self, record: Record, body: dict[str, Any], adverse: int | None) -> None:
        v = self.versions.setdefault(record.version, VersionTraffic(record.version))
        kind = str(body.get("kind", "?"))
        v.records += 1
        v.kinds[kind] += 1
        v.callers[record.caller or "(anonymous)"] += 1
        v.first = v.first or record.time
        v.last = record.time
        if kind in NOT_TRAFFIC:
            return
        output = body.get("output") or {}
        labels = [str(p) for p in output.get("predictions") or []]
        v.decisions += len(body.get("input") or [])
        v.labels.update(labels)
        probabilities = output.get("probabilities")
        if probabilities is not None and adverse is not None:
            v.scores.extend(_at(p, adverse) for p in probabilities)
        elif probabilities is None:
            v.scores.extend(_number(p) for p in output.get("predictions") or [])
        self.outcomes.setdefault(record.request_id, {})[record.version] = labels

    def _add_detail(self, body: dict[str, Any]) -> None:
        kind = str(body.get("kind", "?"))
        inputs = body.get("input") or []
        encoded = [encode_row(self.features, r) for r in inputs]
        if kind not in NOT_TRAFFIC:
            for x, redacted in encoded:
                self.rows.append(x)
                self.redacted.append(redacted)
        explanations = body.get("explanations") or []
        for (x, redacted), e in zip(encoded, explanations, strict=False):
            if isinstance(e, dict):
                self.explained.append(Explained(kind, x, redacted, e))
        self.reasons.extend(r for r in body.get("reason_codes") or [] if isinstance(r, list))


def _number(value: Any) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if number else math.nan


def _at(row: Any, index: int) -> float:
    return _number(row[index]) if isinstance(row, list) and index < len(row) else math.nan


def read_traffic(
    sink: AuditSink,
    model: str,
    version: str,
    features: list[Feature],
    since: str | None,
    until: str | None,
    adverse: Callable[[str], int | None],
    progress: Callable[[Iterator[Record]], Iterator[Record]] = lambda it: it,
) -> ModelTraffic:
    """The records of ``model`` in [since, until); ``adverse(version)`` gives the output index
    of the adverse class in that version's probabilities (None when not known)."""
    traffic = ModelTraffic(version, features)
    indices: dict[str, int | None] = {}
    for record in progress(records(sink, Query(model=model, since=since, until=until))):
        body = read_body(record.body)
        if body is None:  # a tampered record: verification reports it
            continue
        if record.version not in indices:
            indices[record.version] = adverse(record.version)
        traffic._add_version(record, body, indices[record.version])
        if record.version == version:
            traffic._add_detail(body)
    return traffic
