"""Turning request instances into the model's float matrix, with precise errors.

Every mistake is reported as ``InvalidInput`` naming the instance and the
field, e.g. ``instances[2].debt_to_income: expected a number, got "high"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from xserve.errors import InvalidInput, PayloadTooLarge
from xserve.repository.manifest import Feature
from xserve.runtimes.base import Matrix

__all__ = ["to_matrix"]

_SHOWN = 40
"""Longest rendering of a caller's value echoed back in an error."""


def _show(raw: Any) -> str:
    try:
        text = repr(raw)
    except ValueError:  # an int longer than Python will turn into text
        return "a number too large"
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}..."


def _value(feature: Feature, raw: Any, where: str) -> float:
    if raw is None:
        if feature.nullable:
            return math.nan
        raise InvalidInput(f"{where}: a value is required (null is not allowed)")
    kind = feature.type
    if kind == "categorical":
        cats = feature.categories or []
        if isinstance(raw, str):
            try:
                return float(cats.index(raw))
            except ValueError:
                raise InvalidInput(f"{where}: {_show(raw)} is not one of {cats}") from None
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(cats):
            return float(raw)
        raise InvalidInput(f"{where}: expected one of {cats}, got {_show(raw)}")
    if kind == "boolean":
        if isinstance(raw, bool) or raw in (0, 1):
            return float(raw)
        raise InvalidInput(f"{where}: expected true or false, got {_show(raw)}")
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise InvalidInput(f"{where}: expected a number, got {_show(raw)}")
    try:
        value = float(raw)
    except OverflowError:  # JSON integers have no size limit
        raise InvalidInput(f"{where}: {_show(raw)} is out of range") from None
    if not math.isfinite(value):
        if math.isnan(value) and feature.nullable:
            return value
        raise InvalidInput(f"{where}: {_show(raw)} is not allowed (not a finite number)")
    if kind == "integer" and not value.is_integer():
        raise InvalidInput(f"{where}: expected an integer, got {_show(raw)}")
    return value


def _row_from_object(row: dict[str, Any], features: list[Feature], i: int) -> list[float]:
    if len(row) != len(features) or any(f.name not in row for f in features):
        names = {f.name for f in features}
        unknown = sorted(set(row) - names)
        if unknown:
            raise InvalidInput(f"instances[{i}].{unknown[0]}: unknown feature")
        missing = [f.name for f in features if f.name not in row]
        raise InvalidInput(f"instances[{i}].{missing[0]}: missing feature")
    return [_value(f, row[f.name], f"instances[{i}].{f.name}") for f in features]


def _row_from_list(row: Sequence[Any], features: list[Feature], i: int) -> list[float]:
    if len(row) != len(features):
        raise InvalidInput(
            f"instances[{i}]: expected {len(features)} values "
            f"({', '.join(f.name for f in features)}), got {len(row)}"
        )
    return [_value(f, v, f"instances[{i}].{f.name}") for f, v in zip(features, row, strict=True)]


def to_matrix(instances: Any, features: list[Feature], max_instances: int) -> Matrix:
    """Validate ``instances`` (objects by feature name, or rows in feature order)."""
    if not isinstance(instances, list):
        raise InvalidInput("instances: expected a list of objects or rows")
    if not instances:
        raise InvalidInput("instances: at least one instance is required")
    if len(instances) > max_instances:
        raise PayloadTooLarge(f"instances: {len(instances)} given, at most {max_instances}")
    rows = []
    for i, row in enumerate(instances):
        if isinstance(row, dict):
            rows.append(_row_from_object(row, features, i))
        elif isinstance(row, list):
            rows.append(_row_from_list(row, features, i))
        else:
            raise InvalidInput(f"instances[{i}]: expected an object or a list, got {_show(row)}")
    return np.array(rows, dtype=np.float64)
