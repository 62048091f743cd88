"""The model card section: what the version is, what it is for, and its reference data."""

from __future__ import annotations

import json

import numpy as np

from xserve.explainers.reasons import adverse_index
from xserve.outcomes.analysis import EVALUATION_FILE
from xserve.reports.document import Facts, Paragraph, Section, Table
from xserve.repository.version import ModelVersion

__all__ = ["fmt", "model_card"]


def fmt(value: float | None, spec: str = ".4f") -> str:
    """A figure as the report prints it; missing figures as an em dash."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    return format(value, spec)


def _adverse(model: ModelVersion) -> str:
    if model.task == "regression":
        return f"higher or lower value adverse: {model.manifest.adverse_direction}"
    if not model.classes:
        return "—"
    return str(model.classes[adverse_index(model)])


def _facts(model: ModelVersion) -> Facts:
    m = model.manifest
    background = model.background
    items = [
        ("Model", model.name),
        ("Version", model.version),
        ("Flavor", model.flavor),
        ("Task", model.task),
        ("Classes", ", ".join(str(c) for c in model.classes) if model.classes else "—"),
        ("Adverse outcome", _adverse(model)),
        ("Artifact", m.artifact),
        ("Artifact SHA-256", model.digest),
        (
            "Inline explainer",
            model.inline.method if model.inline else f"none ({model.inline_error})",
        ),
        ("Explanation methods (jobs)", ", ".join(m.explain.methods) or "—"),
        ("Background rows", "—" if background is None else str(background.shape[0])),
        ("Description", m.description or "not stated in the manifest"),
        ("Intended use", m.intended_use or "not stated in the manifest"),
        ("Limitations", m.limitations or "not stated in the manifest"),
    ]
    if m.mlflow is not None:
        items.append(("MLflow source", m.mlflow.model_uri))
    return Facts("model-card-facts", items)


def _features(model: ModelVersion) -> Table:
    rows = []
    for f in model.features:
        if f.categories:
            domain = ", ".join(f.categories)
        elif f.min is not None or f.max is not None:
            domain = f"{fmt(f.min, 'g')} to {fmt(f.max, 'g')}"
        else:
            domain = "—"
        reason = model.manifest.reason_codes.get(f.name, "—")
        rows.append(
            [f.name, f.type, f.description or "—", domain, reason, "yes" if f.personal else "no"]
        )
    return Table(
        "features", ["Feature", "Type", "Description", "Domain", "Reason text", "Personal"], rows
    )


def _background(model: ModelVersion) -> Table | Paragraph:
    x = model.background
    if x is None:
        return Paragraph(
            "This version has no background sample: no importance over the "
            "background and no drift reference.",
            "alert",
        )
    rows = []
    for j, name in enumerate(model.feature_names):
        col = x[:, j][~np.isnan(x[:, j])]
        if col.size == 0:
            rows.append([name, "0", "—", "—", "—", "—", "—"])
            continue
        rows.append(
            [
                name,
                str(col.size),
                *(
                    fmt(float(v), ".6g")
                    for v in (col.mean(), col.std(), col.min(), np.median(col), col.max())
                ),
            ]
        )
    return Table(
        "background-summary",
        ["Feature", "Rows", "Mean", "Std", "Min", "Median", "Max"],
        rows,
        caption="Background sample (explainer background and drift reference)",
    )


def _evaluation(model: ModelVersion) -> Paragraph | Table:
    """The deploy-time evaluation (``xserve deploy --evaluate``), if the version has one."""
    try:
        data = json.loads((model.path / EVALUATION_FILE).read_text(encoding="utf-8"))
        holdout, metrics = data["holdout"], data["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return Paragraph("No deploy-time evaluation (evaluation.json) for this version.", "note")
    serving = data.get("serving") or {}
    diffs = data.get("differences") or {}
    rows = [
        [name, fmt(value), fmt(diffs.get(name))]
        for name, value in sorted(metrics.items())
        if isinstance(value, int | float)
    ]
    gate = ", ".join(
        f"{g['rule']} ({'held' if g['holds'] else 'failed'})" for g in data.get("gate", [])
    )
    caption = (
        f"Deploy-time evaluation on {holdout.get('file')} ({holdout.get('rows')} rows, "
        f"label {holdout.get('label')}, sha256 {str(holdout.get('sha256'))[:12]}…), against "
        f"version {serving.get('version', '—')}; gate: {gate or 'none'}; explanation "
        f"stability {fmt(data.get('explanation_stability'), '.3f')}"
    )
    return Table("evaluation-table", ["Metric", "Value", "Difference"], rows, caption=caption)


def model_card(model: ModelVersion) -> Section:
    return Section("model-card", "Model card").add(
        _facts(model), _features(model), _background(model), _evaluation(model)
    )
