"""Gathering a compliance report's figures: the version from the repository folder, its
decisions from the audit log, and what follows from both."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from xserve.audit import AuditSink, Snapshot, Verdict, sink_from_url, verify
from xserve.audit.record import timestamp
from xserve.errors import InvalidInput, ModelNotReady
from xserve.explainers.attach import attach_inline
from xserve.explainers.reasons import adverse_index
from xserve.monitoring.drift import FeatureDrift, compare
from xserve.outcomes.pairs import read_joined
from xserve.reports.analysis import (
    CHUNK,
    Chunks,
    Fidelity,
    ReasonFrequency,
    Shift,
    adverse_scores,
    agreement,
    fidelity,
    mean_abs_shap,
    reason_frequencies,
    shift,
)
from xserve.reports.outcomes import OutcomeFigures, outcome_figures
from xserve.reports.traffic import ModelTraffic, VersionTraffic, read_traffic
from xserve.repository.repository import ModelRepository
from xserve.repository.version import ModelVersion

__all__ = ["MAX_SHAP_ROWS", "ReportData", "gather", "load_model", "open_audit", "parse_time"]

MAX_SHAP_ROWS = 20_000
"""Traffic rows explained for the served-traffic importance; beyond this, a seeded sample."""
T = TypeVar("T")


def parse_time(name: str, text: str | None, end: bool = False) -> str | None:
    """``--since``/``--until`` as the records write times (UTC). A bare date given as the end
    of a period includes that day."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{name}: {text!r} is not an ISO 8601 date or time") from None
    if end and len(text) == 10:  # YYYY-MM-DD: up to the end of that day
        moment += timedelta(days=1)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return timestamp(moment)


def load_model(models_dir: Path, name: str, version: str | None) -> ModelRepository:
    """The repository with ``name``'s versions loaded (the others are not touched)."""
    repository = ModelRepository(models_dir, on_load=[attach_inline])
    repository.scan(only=name)
    try:
        repository.get(name, version)
    except ModelNotReady as exc:
        failures = [f"version {e.version}: {e.error}" for e in repository.versions(name) if e.error]
        raise ModelNotReady("; ".join([exc.message, *failures])) from None
    return repository


def open_audit(url: str) -> tuple[AuditSink | None, str | None]:
    """The audit store, not yet opened (``with sink:``), or None and why there is none; never
    creates an empty SQLite log, which would verify as intact."""
    sink = sink_from_url(url)
    if sink is None:
        return None, "auditing is turned off (XSERVE_AUDIT_URL=none)"
    from xserve.audit.sqlite import SQLiteSink

    if isinstance(sink, SQLiteSink) and not sink.path.exists():
        return None, f"no audit log at {sink.path}"
    return sink, None


def bar(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Progress on stderr, for the steps that grow with the log or the traffic."""
    return iter(
        tqdm(
            items,
            desc=desc,
            total=total,
            unit=unit,
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
            mininterval=0.5,
        )
    )


def _chunks(desc: str) -> Chunks:
    def wrap(starts: Iterable[int], rows: int) -> Iterator[int]:
        return bar(starts, desc, total=-(-rows // CHUNK), unit="batch")

    return wrap


@dataclass
class ReportData:
    model: ModelVersion
    since: str | None
    until: str | None
    generated: str
    traffic: ModelTraffic
    audit_note: str | None = None
    """Why there is no audit log to read, if there is none."""
    verdict: Verdict | None = None
    drift: dict[str, FeatureDrift] = field(default_factory=dict)
    importance_background: np.ndarray[Any, Any] | None = None
    importance_traffic: np.ndarray[Any, Any] | None = None
    explained_traffic_rows: int = 0
    reasons: list[ReasonFrequency] = field(default_factory=list)
    fidelity: list[Fidelity] = field(default_factory=list)
    outcomes: OutcomeFigures | None = None
    prediction: Shift | None = None
    background_scores: np.ndarray[Any, Any] | None = None
    traffic_scores: np.ndarray[Any, Any] = field(default_factory=lambda: np.empty(0))
    versions: list[VersionTraffic] = field(default_factory=list)
    comparisons: dict[str, tuple[Shift, int, int]] = field(default_factory=dict)
    """Other version -> its prediction shift against this one, shared and agreeing decisions."""

    @property
    def has_traffic(self) -> bool:
        return self.traffic.this.records > 0


def _verify(sink: AuditSink) -> Verdict:
    with sink.snapshot() as snap:
        return verify(
            Snapshot(
                snap.head,
                bar(snap.records, "verifying audit chain", total=snap.head.seq, unit="rec"),
            )
        )


def _traffic_importance(data: ReportData) -> None:
    x = data.traffic.matrix()
    keep = x[~np.asarray(data.traffic.redacted, dtype=bool)] if x.shape[0] else x
    if keep.shape[0] > MAX_SHAP_ROWS:
        pick = np.random.default_rng(0).choice(keep.shape[0], MAX_SHAP_ROWS, replace=False)
        keep = keep[np.sort(pick)]
    data.explained_traffic_rows = int(keep.shape[0])
    data.importance_traffic = mean_abs_shap(data.model, keep, _chunks("explaining traffic"))


def _compare_versions(data: ReportData) -> None:
    data.versions = sorted(data.traffic.versions.values(), key=lambda v: v.first or "")
    mine = data.traffic_scores
    for v in data.versions:
        if v.version == data.model.version or not v.scores:
            continue
        both, agreed = agreement(data.traffic, v.version)
        data.comparisons[v.version] = (shift(mine, np.asarray(v.scores)), both, agreed)


def gather(
    repository: ModelRepository,
    name: str,
    version: str | None,
    audit_url: str,
    since: str | None = None,
    until: str | None = None,
    segment_labels: dict[str, str] | None = None,
) -> ReportData:
    """Every figure of the report on ``name`` (``version``, default the serving one);
    ``segment_labels`` names the segment values whose digests it maps."""
    model = repository.get(name, version)

    def adverse(v: str) -> int | None:
        entry = next((e for e in repository.versions(name) if e.version == v), None)
        if entry is not None and entry.model is not None:
            return adverse_index(entry.model)
        return adverse_index(model) if model.task == "classification" else None

    sink, note = open_audit(audit_url)
    traffic = ModelTraffic(model.version, model.features)
    data = ReportData(model, since, until, timestamp(), traffic, audit_note=note)
    if sink is not None:
        with sink:
            data.traffic = read_traffic(
                sink,
                name,
                model.version,
                model.features,
                since,
                until,
                adverse,
                progress=lambda it: bar(it, "reading audit log", unit="rec"),
            )
            data.verdict = _verify(sink)
            joined = read_joined(sink, name, since, until)
            data.outcomes = outcome_figures(repository, model, joined, segment_labels or {})
    _analyse(data)
    return data


def _analyse(data: ReportData) -> None:
    model, traffic = data.model, data.traffic
    x = traffic.matrix()
    background = model.background
    data.drift = compare(model.features, background, x)
    if background is not None:
        data.importance_background = mean_abs_shap(
            model, background, _chunks("explaining background")
        )
        data.background_scores = adverse_scores(model, model.runtime.predict(background))
    data.traffic_scores = np.asarray(traffic.this.scores, dtype=np.float64)
    if data.has_traffic:
        _traffic_importance(data)
        data.reasons = reason_frequencies(traffic.reasons)
        data.fidelity = fidelity(model, traffic.explained)
        if data.background_scores is not None and data.traffic_scores.size:
            data.prediction = shift(data.background_scores, data.traffic_scores)
    _compare_versions(data)
