"""Typed answers: what a decision produced, from the explainer to the audit body and the
HTTP encoder (msgspec encodes these Structs directly; absent fields are left out)."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "UNSET",
    "Answer",
    "ClientId",
    "Explanation",
    "JobTicket",
    "JobView",
    "ReasonCode",
    "UnsetType",
]

ClientId = str | int | float
"""The client's own ``id`` for a request, echoed and recorded as sent."""


class ReasonCode(msgspec.Struct, frozen=True):
    """A feature that pushed the decision toward the adverse outcome."""

    feature: str
    reason: str
    contribution: float
    """The push toward the adverse outcome in the explanation's output space (> 0)."""


class Explanation(msgspec.Struct, frozen=True, rename={"class_": "class"}):
    """One instance's explanation, for every method; fields a method has no use for stay
    UNSET and are not encoded."""

    method: str
    class_: Any = None
    """The explained class label (None for regression)."""
    output: str | UnsetType = UNSET
    """The output space: ``margin``, ``probability`` or ``value``."""
    base_value: float | UnsetType = UNSET
    intercept: float | UnsetType = UNSET
    score: float | UnsetType = UNSET
    values: dict[str, float] | UnsetType = UNSET
    conditions: dict[str, str] | UnsetType = UNSET
    """LIME: the discretised condition each feature value fell in."""
    anchor: list[str] | UnsetType = UNSET
    precision: float | UnsetType = UNSET
    coverage: float | UnsetType = UNSET
    reason_codes: list[ReasonCode] | UnsetType = UNSET

    def without_reasons(self) -> Explanation:
        """The explanation as the audit body keeps it (reason codes stand on their own)."""
        return msgspec.structs.replace(self, reason_codes=UNSET)


class Answer(msgspec.Struct, frozen=True):
    """What a caller is answered for one decision (v1 shape; V2 encodes tensors from the
    same prediction) and what its audit record holds."""

    model: str
    version: str
    request_id: str
    id: ClientId | UnsetType = UNSET
    predictions: list[Any] | UnsetType = UNSET
    probabilities: list[list[float]] | UnsetType = UNSET
    method: str | UnsetType = UNSET
    """Explain answers: the method that explained every instance."""
    explanations: list[Explanation] | UnsetType = UNSET
    cached: list[bool] | UnsetType = UNSET
    """Explain answers: whether each instance's explanation came from the cache."""


class JobTicket(msgspec.Struct, frozen=True):
    """An explanation job to poll (the 202 answer of ``/explain``)."""

    job_id: str
    status: str
    status_url: str
    model: str
    version: str
    method: str


class JobView(msgspec.Struct, frozen=True):
    """``GET /v1/jobs/{id}``: the job's state, with its answer or error once finished."""

    job_id: str
    status: str
    result: Answer | UnsetType = UNSET
    error: str | UnsetType = UNSET
