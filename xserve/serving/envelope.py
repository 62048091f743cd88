"""The one place an answer's envelope is built: model, version, request id, client id."""

from __future__ import annotations

from typing import Any

from xserve.repository.version import ModelVersion
from xserve.serving.outcome import UNSET, Answer, ClientId, UnsetType

__all__ = ["envelope"]


def envelope(
    model: ModelVersion, request_id: str, client_id: ClientId | None, **body: Any
) -> Answer:
    """``body`` under the envelope. The client's ``id`` is echoed (and recorded) whenever
    it was sent and is not null, the same rule for v1, V2 and jobs."""
    echoed: ClientId | UnsetType = UNSET if client_id is None else client_id
    return Answer(model.name, model.version, request_id, echoed, **body)
