"""One automated decision as the data plane hands it to the decision log."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from xserve.repository.version import ModelVersion
from xserve.runtimes.base import Matrix

__all__ = ["Decision", "new_request_id"]


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


def new_request_id() -> str:
    """A UUIDv7 (RFC 9562) in hex: time-ordered, so the audit log's request-id index
    grows at its end instead of touching a random page per record (fewer pages per
    commit to write and fsync), and still unguessable (74 random bits)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10)) & (1 << 80) - 1
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 9562 variant
    return uuid.UUID(int=value).hex
