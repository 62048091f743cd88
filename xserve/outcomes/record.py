"""One outcome as it is recorded: kind ``outcome`` in the audit chain, linked to its
decision by request id, instance and the decision record's sequence number.

A later outcome for the same (request id, instance) supersedes the earlier one; both
stay in the chain. Segment values (a protected group, say) are personal data: they are
recorded as keyed digests, as personal features are, so that records can be grouped by
segment without holding its values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DECISION_KINDS", "OUTCOME_KIND", "Observed", "Scalar"]

OUTCOME_KIND = "outcome"
DECISION_KINDS = frozenset({"predict", "infer"})
"""Record kinds an outcome can belong to (a shadow's answer was never given)."""
Scalar = str | int | float | bool


@dataclass(frozen=True)
class Observed:
    request_id: str
    instance: int
    model: str
    version: str
    decision_seq: int
    """Sequence number of the decision record the outcome belongs to."""
    outcome: Scalar
    """A class label of the model (as the model names it), or a regressor's number."""
    caller: str | None
    segments: dict[str, Scalar] | None = None

    def body(self, time: str, segment_digests: dict[str, str] | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": OUTCOME_KIND,
            "time": time,
            "request_id": self.request_id,
            "caller": self.caller,
            "model": self.model,
            "version": self.version,
            "instance": self.instance,
            "decision_seq": self.decision_seq,
            "outcome": self.outcome,
        }
        if segment_digests:
            body["segments"] = segment_digests
        return body
