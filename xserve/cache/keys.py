"""Cache keys: what an explanation depends on, so a changed model never serves an old answer.

A key covers the artifact's digest, the method, its canonical parameters, the
background's digest and the canonical input row (float64 after decoding, so
``{"income": 5}`` and ``[5, ...]`` share a key). ``SCHEMA`` changes whenever
the records' format does.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = ["SCHEMA", "background_digest", "explanation_key", "row_digest"]

SCHEMA = "xserve-explanation/1"
_NO_BACKGROUND = "none"
_backgrounds: weakref.WeakKeyDictionary[ModelVersion, str] = weakref.WeakKeyDictionary()


def background_digest(model: ModelVersion) -> str:
    """sha256 of the version's background matrix (memoised per loaded version)."""
    known = _backgrounds.get(model)
    if known is None:
        bg = model.background
        if bg is None:
            known = _NO_BACKGROUND
        else:
            data = np.ascontiguousarray(bg, dtype="<f8")
            h = hashlib.sha256(f"{data.shape}".encode())
            h.update(data.tobytes())
            known = h.hexdigest()
        _backgrounds[model] = known
    return known


def row_digest(row: npt.NDArray[np.float64]) -> bytes:
    """The row's bytes with -0.0 and every NaN made one value."""
    data = np.ascontiguousarray(row, dtype="<f8") + 0.0  # -0.0 + 0.0 == +0.0
    data[np.isnan(data)] = np.nan
    return data.tobytes()


def explanation_key(
    model: ModelVersion, method: str, params: str, row: npt.NDArray[np.float64]
) -> str:
    h = hashlib.sha256()
    for part in (SCHEMA, model.digest, method, params, background_digest(model)):
        h.update(part.encode())
        h.update(b"\0")
    h.update(row_digest(row))
    return h.hexdigest()
