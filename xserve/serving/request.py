"""The one request object every front-end hands the data plane."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from xserve.explainers.reasons import DEFAULT_REASONS
from xserve.repository.version import ModelVersion
from xserve.serving.outcome import ClientId

__all__ = ["DecisionRequest", "Kind"]

Kind = Literal["predict", "infer", "explain", "shadow"]
"""The audit record's ``kind``: v1 predict, V2 infer, an explanation, a shadow copy."""


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    kind: Kind
    model: str
    version: str | None = None
    """None: the traffic policy chooses (and its shadow version gets a copy)."""
    instances: Any = None
    """v1 instances (objects by feature name or rows in feature order)."""
    rows_for: Callable[[ModelVersion], Any] | None = None
    """Instead of ``instances``: rows built once the version is known (V2 tensors)."""
    explain: bool = False
    """Predict and infer: add the version's exact inline attributions."""
    method: str | None = None
    """Explain: the method (default: the version's inline one, else its first job method)."""
    params: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None
    """``?class=``: the class to explain (default: the predicted one)."""
    reasons: int = DEFAULT_REASONS
    caller: str | None = None
    subject: str | None = None
    """Whom the decision is about: a sticky split sends them to the same version."""
    client_id: ClientId | None = None
    wait: float = 0.0
    """Explain: seconds to wait for a job before answering with the job to poll."""

    def raw_rows(self, model: ModelVersion) -> Any:
        return self.rows_for(model) if self.rows_for is not None else self.instances
