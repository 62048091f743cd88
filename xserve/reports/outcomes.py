"""The report's section on outcomes: performance per version with concept drift, this
version against the others (significance), fair-lending figures per segment, and the
deploy-time evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xserve.errors import InvalidInput
from xserve.outcomes.analysis import compare_arms, performance_of, read_baseline
from xserve.outcomes.fairness import SegmentFigures, fairness, segment_names
from xserve.outcomes.pairs import Joined
from xserve.reports.card import fmt
from xserve.reports.document import Paragraph, Section, Table
from xserve.repository.repository import ModelRepository
from xserve.repository.version import ModelVersion

__all__ = ["OutcomeFigures", "outcome_figures", "outcomes_section"]

MIN_OUTCOMES = 30


@dataclass
class OutcomeFigures:
    performance: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    fairness: dict[str, list[SegmentFigures]] = field(default_factory=dict)
    baseline: dict[str, float] | None = None


def outcome_figures(
    repository: ModelRepository, model: ModelVersion, joined: Joined, labels: dict[str, str]
) -> OutcomeFigures:
    """Every figure of the section, for ``model`` and the versions beside it."""
    out = OutcomeFigures(baseline=read_baseline(model))
    for entry in repository.versions(model.name):
        arm = joined.arms.get(entry.version)
        if entry.model is None or arm is None:
            continue
        figures = performance_of(entry.model, arm, joined, MIN_OUTCOMES, 0.05)
        out.performance.append(figures)
        if entry.version == model.version or not figures["n"]:
            continue
        mine = joined.arms.get(model.version)
        metric = "auc" if model.task == "classification" else "rmse"
        if mine is None:
            continue
        try:
            comparison, paired = compare_arms(metric, model, mine, arm, joined)
        except (InvalidInput, ValueError):  # too few pairs, one label only: no test
            continue
        out.comparisons.append(
            {**comparison.describe(), "b_version": entry.version, "paired": paired}
        )
    arm = joined.arms.get(model.version)
    if arm is not None:
        for name in segment_names(joined):
            rows = fairness(arm, joined, model, name, labels)
            if rows:
                out.fairness[name] = rows
    return out


def outcomes_section(model: ModelVersion, figures: OutcomeFigures | None) -> Section:
    s = Section("outcomes", "Outcomes, performance and fair lending")
    if figures is None or not any(p["n"] for p in figures.performance):
        return s.add(
            Paragraph("No outcomes were recorded for the decisions of the period.", "note")
        )
    rows, flags = [], []
    for p in figures.performance:
        m = p["metrics"]
        names = (
            ["auc", "accuracy", "brier", "ece"]
            if p["task"] == "classification"
            else ["rmse", "mae"]
        )
        cells = [
            f"{fmt(m[k]['value'])} [{fmt(m[k]['ci95'][0])}, {fmt(m[k]['ci95'][1])}]" for k in names
        ]
        status = p["concept_drift"]["status"]
        rows.append([p["version"], str(p["n"]), *cells, status])
        flags.append("drift" if status == "drift" else None)
    headers = (
        ["AUC", "Accuracy", "Brier", "ECE"] if model.task == "classification" else ["RMSE", "MAE"]
    )
    s.add(
        Paragraph(
            "Per version, on the decisions of the period whose outcomes were recorded: each "
            "figure with its bootstrap 95% interval, and concept drift against the version's "
            f"deploy-time evaluation (insufficient data under {MIN_OUTCOMES} outcomes)."
        )
    )
    s.add(
        Table("performance-table", ["Version", "n", *headers, "Concept drift"], rows, flags=flags)
    )
    if figures.baseline:
        baseline = ", ".join(f"{k} {fmt(v)}" for k, v in sorted(figures.baseline.items()))
        s.add(Paragraph(f"Deploy-time evaluation of version {model.version}: {baseline}."))
    for c in figures.comparisons:
        test = "paired over shadow traffic" if c["paired"] else "independent arms"
        s.add(
            Paragraph(
                f"Version {c['b_version']} against version {model.version}, {c['metric']}: "
                f"difference {fmt(c['difference'])} (95% interval {fmt(c['ci95'][0])} to "
                f"{fmt(c['ci95'][1])}), p = {fmt(c['p_value'], '.3g')} ({c['test']}, {test}; "
                f"n {c['n']['a']} and {c['n']['b']})."
            )
        )
    for name, segments in figures.fairness.items():
        s.add(
            Paragraph(
                f"Fair lending by {name} (values kept only as digests; aggregates only): the "
                "adverse-decision rate, the adverse impact ratio against the most favoured "
                "segment (flagged below 0.8, the four-fifths rule) and equal opportunity (the "
                "true-positive rate and its gap to the most favoured segment)."
            )
        )
        s.add(
            Table(
                f"fairness-{name}",
                ["Segment", "n", "Adverse rate", "Impact ratio", "TPR", "TPR gap"],
                [
                    [
                        r.segment,
                        str(r.n),
                        fmt(r.adverse_rate),
                        fmt(r.impact_ratio),
                        fmt(r.tpr),
                        fmt(r.tpr_gap),
                    ]
                    for r in segments
                ],
                flags=["drift" if r.flagged else None for r in segments],
            )
        )
    return s
