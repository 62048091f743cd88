"""Adverse-action reason codes and the JSON form of one instance's explanation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from xserve.errors import InvalidInput
from xserve.serving.outcome import Explanation, ReasonCode

if TYPE_CHECKING:
    from xserve.explainers.base import Attribution
    from xserve.repository.version import ModelVersion

__all__ = ["adverse_index", "class_index", "reason_codes", "render"]

DEFAULT_REASONS = 4


def adverse_index(model: ModelVersion) -> int:
    """Output index whose increase is adverse (the last class unless configured)."""
    if model.task == "regression" or not model.classes:
        return 0
    adverse = model.manifest.adverse_class
    if adverse is None:
        return len(model.classes) - 1
    # Matched as text, like ?class=: `adverse_class: "1"` names the class 1 of a booster.
    return [str(c) for c in model.classes].index(str(adverse))


def class_index(model: ModelVersion, label: str | None) -> int | None:
    """The output index of a ``?class=`` label (matched as text), or None for the default."""
    if label is None or model.task == "regression":
        return None
    for i, c in enumerate(model.classes or []):
        if str(c) == label:
            return i
    raise InvalidInput(f"class: {label!r} is not one of {model.classes}")


def _reason_text(model: ModelVersion, index: int) -> str:
    feature = model.features[index]
    text = model.manifest.reason_codes.get(feature.name)
    if text:
        return text
    label = feature.description or feature.name.replace("_", " ")
    return f"{label[:1].upper()}{label[1:]}"


def reason_codes(
    model: ModelVersion, values: npt.NDArray[np.float64], limit: int
) -> list[ReasonCode]:
    """Features that pushed toward the adverse outcome, most first.

    ``values`` are one row's attributions of the adverse output; for a
    regression with ``adverse_direction: lower`` a negative value is adverse.
    ``contribution`` is the push toward the adverse outcome (always positive).
    """
    sign = (
        -1.0 if model.task == "regression" and model.manifest.adverse_direction == "lower" else 1.0
    )
    push = sign * values
    order = [int(i) for i in np.argsort(-push, kind="stable") if push[i] > 0][:limit]
    return [
        ReasonCode(model.features[i].name, _reason_text(model, i), float(push[i])) for i in order
    ]


def render(
    model: ModelVersion,
    attribution: Attribution,
    row: int,
    output: int,
    reasons: int = DEFAULT_REASONS,
) -> Explanation:
    """One instance's explanation as the JSON answer carries it."""
    names = model.feature_names
    values = attribution.values[row, :, output]
    return Explanation(
        attribution.method,
        model.classes[output] if model.classes else None,
        output=attribution.output,
        base_value=float(attribution.base[row, output]),
        values=dict(zip(names, values.tolist(), strict=True)),
        reason_codes=reason_codes(model, attribution.values[row, :, adverse_index(model)], reasons),
    )
