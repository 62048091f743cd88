"""One automated decision as the data plane hands it to the decision log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xserve.repository.version import ModelVersion
from xserve.runtimes.base import Matrix

__all__ = ["Decision"]


@dataclass(frozen=True)
class Decision:
    kind: str
    """``predict``, ``infer``, ``explain`` or ``shadow``."""
    model: ModelVersion
    request_id: str
    caller: str | None
    inputs: Matrix
    """The rows the model received."""
    answer: dict[str, Any]
    """What the caller is answered (predictions, probabilities, explanations...)."""
