"""Turning request instances into the model's float matrix, with precise errors.

Every mistake is reported as ``InvalidInput`` naming the instance and the
field, e.g. ``instances[2].debt_to_income: expected a number, got "high"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from xserve.errors import InvalidInput, InvalidJson, PayloadTooLarge
from xserve.repository.manifest import Feature
from xserve.runtimes.base import Matrix

__all__ = ["FLOAT32_MAX", "MAX_DEPTH", "check_client_id", "check_depth", "to_matrix"]

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The largest magnitude an input may have: every runtime computes in float32 (ONNX float
models, XGBoost, scikit-learn trees) or compares against float32 thresholds, where a
larger value is infinite or refused."""
MAX_DEPTH = 64
"""The deepest nesting of arrays and objects a JSON body may have."""
MAX_ID_LENGTH = 256
_INT64 = 2**63

_SHOWN = 40
"""Longest rendering of a caller's value echoed back in an error."""


def _show(raw: Any) -> str:
    try:
        text = repr(raw)
    except ValueError:  # an int longer than Python will turn into text
        return "a number too large"
    except RecursionError:
        return "a deeply nested value"
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
    if abs(value) > FLOAT32_MAX:
        raise InvalidInput(
            f"{where}: {_show(raw)} is out of range: models compute in float32, "
            f"so a value's magnitude must be at most {FLOAT32_MAX:.8g}"
        )
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


def check_client_id(value: Any, where: str = "id") -> None:
    """A client's ``id``: a string of at most 256 characters, an integer within ±2^63 or a
    finite number (it is echoed and recorded as sent)."""
    if value is None or (isinstance(value, str) and len(value) <= MAX_ID_LENGTH):
        return
    if isinstance(value, str):
        raise InvalidInput(f"{where}: longer than {MAX_ID_LENGTH} characters")
    if isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64:
        return
    if isinstance(value, float) and math.isfinite(value):
        return
    raise InvalidInput(
        f"{where}: expected a string of at most {MAX_ID_LENGTH} characters or a number "
        f"(an integer within ±2^63 or a finite one), got {_show(value)}"
    )


def check_depth(raw: bytes | memoryview, where: str = "body") -> None:
    """Refuse JSON text whose arrays and objects nest deeper than ``MAX_DEPTH``, before any
    decoder recurses into it. Linear and vectorised: brackets inside strings (quotes after
    an even run of backslashes open and close them) do not count."""
    text = bytes(raw)
    if text.count(b"[") + text.count(b"{") <= MAX_DEPTH:
        return
    b = np.frombuffer(text, dtype=np.uint8)
    pos = np.arange(b.size)
    backslash = b == ord("\\")
    last_other = np.maximum.accumulate(np.where(backslash, -1, pos))
    run = np.zeros(b.size, dtype=np.int64)  # backslashes right before each byte
    run[1:] = pos[:-1] - last_other[:-1]
    quote = (b == ord('"')) & (run % 2 == 0)
    outside = np.cumsum(quote) % 2 == 0
    opens = ((b == ord("[")) | (b == ord("{"))) & outside
    closes = ((b == ord("]")) | (b == ord("}"))) & outside
    depth = int(np.cumsum(opens.astype(np.int64) - closes).max(initial=0))
    if depth > MAX_DEPTH:
        raise InvalidJson(f"{where}: JSON nested {depth} levels deep, at most {MAX_DEPTH}")
