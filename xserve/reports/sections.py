"""The report's analytical sections: importance, reason codes, fidelity, drift, predictions."""

from __future__ import annotations

import numpy as np

from xserve.explainers.build import ADDITIVITY_RTOL
from xserve.monitoring.drift import BINS, MIN_ROWS, PSI_DRIFT, PSI_WARN
from xserve.reports import plots
from xserve.reports.card import fmt
from xserve.reports.data import MAX_SHAP_ROWS, ReportData
from xserve.reports.document import Figure, Paragraph, Section, Table

__all__ = ["drift", "fidelity", "importance", "prediction", "reasons"]

NO_TRAFFIC = "No decisions were recorded for this version in the period."


def importance(data: ReportData) -> Section:
    s = Section("importance", "Global feature importance")
    model = data.model
    if model.inline is None:
        return s.add(Paragraph(f"Not available: {model.inline_error}", "note"))
    bg, tr = data.importance_background, data.importance_traffic
    sampled = ", a seeded sample" if data.explained_traffic_rows == MAX_SHAP_ROWS else ""
    s.add(
        Paragraph(
            f"Mean absolute {model.inline.method} attribution per feature, for the adverse output "
            f"(the one reason codes rank; {model.inline.output} space), over the background sample "
            f"and over the served traffic of the period ({data.explained_traffic_rows} rows"
            f"{sampled})."
        )
    )
    rows = [
        [
            name,
            fmt(None if bg is None else float(bg[j]), ".6g"),
            fmt(None if tr is None else float(tr[j]), ".6g"),
        ]
        for j, name in enumerate(model.feature_names)
    ]
    s.add(
        Table(
            "importance-table", ["Feature", "Mean |SHAP| background", "Mean |SHAP| traffic"], rows
        )
    )
    if bg is not None or tr is not None:
        s.add(
            Figure(
                "importance-plot",
                plots.importance(model.feature_names, bg, tr),
                "Mean |SHAP| per feature: background and served traffic",
            )
        )
    return s


def reasons(data: ReportData) -> Section:
    s = Section("reasons", "Reason-code frequencies")
    explained = len(data.traffic.reasons)
    if not explained:
        return s.add(
            Paragraph(
                NO_TRAFFIC
                if not data.has_traffic
                else "No reason codes were recorded in the period (no decision was explained).",
                "note",
            )
        )
    s.add(
        Paragraph(
            f"Over {explained} explained decisions recorded in the period: how often "
            "each feature was given as a reason for the adverse outcome, and as the "
            "principal (first) reason."
        )
    )
    rows = [
        [r.feature, r.reason, str(r.listed), f"{100 * r.listed / explained:.1f}%", str(r.principal)]
        for r in data.reasons
    ]
    s.add(Table("reason-codes", ["Feature", "Reason", "Listed", "Share", "Principal"], rows))
    s.add(
        Figure(
            "reasons-plot",
            plots.reason_bars(
                [r.feature for r in data.reasons],
                [r.listed for r in data.reasons],
                [r.principal for r in data.reasons],
            ),
            "Reason-code frequencies",
        )
    )
    return s


def fidelity(data: ReportData) -> Section:
    s = Section("fidelity", "Explanation fidelity")
    if not data.fidelity:
        return s.add(
            Paragraph(
                NO_TRAFFIC
                if not data.has_traffic
                else "No explanations were recorded in the period.",
                "note",
            )
        )
    s.add(
        Paragraph(
            "Additive attributions must add up to the model's output: base value + sum of values "
            "is recomputed against this version for every recorded explanation (relative residual, "
            f"tolerance {ADDITIVITY_RTOL:g}). LIME is not additive: its local fit score (R²) is "
            "shown instead."
        )
    )
    rows = []
    for f in data.fidelity:
        scores = np.asarray(f.scores)
        rows.append(
            [
                f.method,
                f.output,
                str(f.count),
                str(f.checked),
                fmt(f.max_residual, ".2e"),
                fmt(f.mean_residual, ".2e"),
                f"{f.within_tolerance}/{f.checked}" if f.checked else "—",
                fmt(float(scores.mean()) if scores.size else None, ".3f"),
                fmt(float(scores.min()) if scores.size else None, ".3f"),
            ]
        )
    flags = [
        "drift" if f.checked and f.within_tolerance < f.checked else None for f in data.fidelity
    ]
    s.add(
        Table(
            "fidelity-table",
            [
                "Method",
                "Output",
                "Explanations",
                "Checked",
                "Max residual",
                "Mean residual",
                "Within tolerance",
                "LIME score mean",
                "LIME score min",
            ],
            rows,
            flags=flags,
        )
    )
    for f in data.fidelity:
        if f.note:
            s.add(Paragraph(f"{f.method}: {f.note}", "note"))
    return s


def drift(data: ReportData) -> Section:
    s = Section("drift", "Input drift")
    rows_seen = data.traffic.matrix().shape[0]
    s.add(
        Paragraph(
            f"Served traffic of the period ({rows_seen} rows) against the background: PSI over "
            f"{BINS} bins at the background's deciles (status ok below {PSI_WARN}, warn below "
            f"{PSI_DRIFT}, drift above; no status under {MIN_ROWS} rows) and the two-sample "
            "Kolmogorov-Smirnov statistic."
        )
    )
    if data.model.background is None:
        return s.add(Paragraph("No background sample: no drift reference.", "alert"))
    if not rows_seen:
        return s.add(Paragraph(NO_TRAFFIC, "note"))
    if rows_seen < MIN_ROWS:  # a PSI over a handful of rows is noise, not a finding
        return s.add(
            Paragraph(
                f"Insufficient data: {rows_seen} rows served in the period, fewer than the "
                f"{MIN_ROWS} drift needs. No drift figure is given.",
                "alert",
            )
        )
    names = list(data.drift)
    d = [data.drift[n] for n in names]
    s.add(
        Table(
            "drift-table",
            ["Feature", "PSI", "KS", "KS p-value", "Status"],
            [
                [n, fmt(x.psi), fmt(x.ks), fmt(x.ks_pvalue, ".3g"), x.status or "—"]
                for n, x in zip(names, d, strict=True)
            ],
            flags=[x.status if x.status in ("warn", "drift") else None for x in d],
        )
    )
    flagged = [n for n, x in zip(names, d, strict=True) if x.status in ("warn", "drift")]
    if flagged:
        s.add(Paragraph(f"Flagged: {', '.join(flagged)}.", "alert"))
    else:
        s.add(Paragraph("No feature is flagged.", "good"))
    s.add(
        Figure(
            "drift-plot",
            plots.psi_bars(names, [x.psi for x in d], [x.status for x in d]),
            "PSI per feature, with the warn and drift thresholds",
        )
    )
    top = sorted(range(len(names)), key=lambda j: -(d[j].psi or 0.0))[:4]
    x = data.traffic.matrix()
    s.add(
        Figure(
            "drift-histograms",
            plots.feature_histograms(
                [names[j] for j in top], data.model.background[:, top], x[:, top]
            ),
            "Distributions of the most drifted features: background and traffic",
        )
    )
    return s


def prediction(data: ReportData) -> Section:
    s = Section("prediction", "Prediction distribution")
    model = data.model
    what = (
        "the adverse class's probability"
        if model.task == "classification"
        else "the predicted value"
    )
    p = data.prediction
    if p is None:
        return s.add(
            Paragraph(
                NO_TRAFFIC
                if not data.has_traffic
                else "No background predictions to compare with.",
                "note",
            )
        )
    s.add(
        Paragraph(
            f"Distribution of {what}: the model on its background against what it "
            "answered to the traffic of the period."
        )
    )
    s.add(
        Table(
            "prediction-table",
            ["Measure", "Value"],
            [
                ["Background rows", str(p.reference_rows)],
                ["Traffic decisions", str(p.current_rows)],
                ["Mean on background", fmt(p.reference_mean)],
                ["Mean on traffic", fmt(p.current_mean)],
                ["PSI", fmt(p.drift.psi)],
                ["KS", fmt(p.drift.ks)],
                ["KS p-value", fmt(p.drift.ks_pvalue, ".3g")],
                ["Status", p.drift.status or "—"],
            ],
        )
    )
    assert data.background_scores is not None
    s.add(
        Figure(
            "prediction-plot",
            plots.distributions(
                [("background", data.background_scores), ("traffic", data.traffic_scores)], what
            ),
            f"Distribution of {what}",
        )
    )
    return s
