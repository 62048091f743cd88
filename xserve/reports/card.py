"""The model card section: what the version is, what it is for, and its reference data."""

from __future__ import annotations

import numpy as np

from xserve.explainers.reasons import adverse_index
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


def model_card(model: ModelVersion) -> Section:
    return Section("model-card", "Model card").add(
        _facts(model), _features(model), _background(model)
    )
