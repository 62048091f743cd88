"""The compliance report as a Document: summary, model card, audit log, the analytical
sections and the comparison of versions that shared traffic."""

from __future__ import annotations

import numpy as np

from xserve import __version__
from xserve.explainers.reasons import adverse_index
from xserve.reports import plots, sections
from xserve.reports.card import fmt, model_card
from xserve.reports.data import ReportData
from xserve.reports.document import Document, Facts, Figure, Paragraph, Section, Style, Table
from xserve.reports.outcomes import outcomes_section
from xserve.reports.traffic import VersionTraffic

__all__ = ["report_document"]


def _period(data: ReportData) -> str:
    return f"{data.since or 'the first record'} to {data.until or data.generated} (UTC)"


def _chain(data: ReportData) -> tuple[str, Style]:
    v = data.verdict
    if v is None:
        return f"not verified: {data.audit_note}", "alert"
    if v.ok:
        return (
            f"intact: {v.records} records verified, head record {v.head.seq} hash {v.head.hash}",
            "good",
        )
    return f"TAMPERED: record {v.first_bad}: {v.reason}", "alert"


def _summary(data: ReportData) -> Section:
    this = data.traffic.this
    flagged = [n for n, d in data.drift.items() if d.status == "drift"]
    chain, style = _chain(data)
    s = Section("summary", "Summary").add(
        Facts(
            "summary-facts",
            [
                ("Model", data.model.name),
                ("Version", data.model.version),
                ("Artifact SHA-256", data.model.digest),
                ("Period", _period(data)),
                ("Records of this version", str(this.records)),
                ("Decisions of this version", str(this.decisions)),
                ("Explained decisions", str(len(data.traffic.reasons))),
                ("Drifted features", ", ".join(flagged) if flagged else "none"),
                ("Audit chain", chain),
                ("Generated", data.generated),
            ],
        )
    )
    if not data.has_traffic:
        s.add(
            Paragraph(
                f"No traffic: no decisions were recorded for {data.model.name} version "
                f"{data.model.version} in the period. The model card, the importance "
                "over the background and the audit verification below still apply.",
                "alert",
            )
        )
    if style != "good":
        s.add(Paragraph(f"Audit chain {chain}.", style))
    return s


def _counts(v: VersionTraffic) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(v.kinds.items())) or "—"


def _audit(data: ReportData) -> Section:
    s = Section("audit", "Audit log")
    chain, style = _chain(data)
    s.add(Paragraph(f"Hash chain {chain}.", style))
    if data.verdict is not None:
        s.add(
            Paragraph(
                "Keep the head hash somewhere else (a ticket, a signed e-mail): the "
                "chain shows piecemeal edits; a rewrite of the whole log from some "
                "point on shows only against a head kept elsewhere.",
                "note",
            )
        )
    rows = [
        [v.version, str(v.records), str(v.decisions), _counts(v), v.first or "—", v.last or "—"]
        for v in data.versions
    ]
    s.add(
        Table(
            "record-counts",
            ["Version", "Records", "Decisions", "Kinds", "First", "Last"],
            rows,
            caption=f"Records of {data.model.name} in the period",
        )
    )
    callers = data.traffic.this.callers
    if callers:
        s.add(
            Table("callers", ["Caller", "Records"], [[c, str(n)] for c, n in callers.most_common()])
        )
    return s


def _adverse_rate(data: ReportData, v: VersionTraffic) -> str:
    model = data.model
    if model.task == "regression" or not model.classes or not v.decisions:
        return "—"
    label = str(model.classes[adverse_index(model)])
    return f"{100 * v.labels.get(label, 0) / v.decisions:.1f}%"


def _versions(data: ReportData) -> Section:
    s = Section("versions", "Versions that shared traffic")
    if len(data.versions) < 2:
        return s.add(
            Paragraph(
                "No other version of the model recorded decisions in the period "
                "(no split or shadow traffic).",
                "note",
            )
        )
    s.add(
        Paragraph(
            f"Versions of {data.model.name} that recorded decisions in the period (A/B "
            "or canary splits, shadow copies): prediction shift against this version "
            f"(version {data.model.version}) and agreement on requests both "
            "decided."
        )
    )
    rows = []
    for v in data.versions:
        c = data.comparisons.get(v.version)
        scores = np.asarray(v.scores, dtype=np.float64)
        mean = float(np.nanmean(scores)) if scores.size and not np.isnan(scores).all() else None
        rows.append(
            [
                v.version + (" (this)" if v.version == data.model.version else ""),
                str(v.records),
                str(v.decisions),
                _counts(v),
                _adverse_rate(data, v),
                fmt(mean),
                fmt(c[0].drift.psi) if c else "—",
                fmt(c[0].drift.ks) if c else "—",
                str(c[1]) if c else "—",
                f"{100 * c[2] / c[1]:.1f}%" if c and c[1] else "—",
            ]
        )
    s.add(
        Table(
            "versions-table",
            [
                "Version",
                "Records",
                "Decisions",
                "Kinds",
                "Adverse rate",
                "Mean score",
                "PSI vs this",
                "KS vs this",
                "Shared decisions",
                "Agreement",
            ],
            rows,
        )
    )
    series = [
        (f"version {v.version}", np.asarray(v.scores, dtype=np.float64))
        for v in data.versions
        if v.scores
    ]
    if series:
        s.add(
            Figure(
                "versions-plot",
                plots.distributions(series, "score"),
                "Prediction distributions by version",
            )
        )
    return s


def report_document(data: ReportData) -> Document:
    m = data.model
    doc = Document(
        title=f"Compliance report: {m.name} version {m.version}",
        subtitle=f"{_period(data)}",
        generated=data.generated,
        footer=f"xserve {__version__} · {m.name} v{m.version} · artifact {m.digest[:16]}…",
    )
    doc.sections = [
        _summary(data),
        model_card(m),
        _audit(data),
        sections.importance(data),
        sections.reasons(data),
        sections.fidelity(data),
        sections.drift(data),
        sections.prediction(data),
        _versions(data),
        outcomes_section(m, data.outcomes),
    ]
    return doc
