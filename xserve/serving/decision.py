"""One automated decision as the data plane hands it to the decision log."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from xserve.repository.version import ModelVersion
from xserve.runtimes.base import Matrix
from xserve.serving.outcome import Answer

__all__ = ["Decision", "DecisionLog", "commit_one", "new_request_id"]


@dataclass(frozen=True)
class Decision:
    kind: str
    """``predict``, ``infer``, ``explain`` or ``shadow``."""
    model: ModelVersion
    request_id: str
    caller: str | None
    inputs: Matrix
    """The rows the model received."""
    answer: Answer
    """What the caller is answered (predictions, probabilities, explanations...)."""


class DecisionLog(Protocol):
    """Where every decision is recorded before it is answered (the audit log)."""

    def commit(self, decisions: Sequence[Decision]) -> Sequence[Exception | None]:
        """Blocking, off the event loop: record ``decisions`` together, durably; for each,
        the error that refuses it, or None."""
        ...


def commit_one(log: DecisionLog | None, decision: Decision) -> None:
    """Record one decision durably (blocking); raise the error that refuses it."""
    if log is None:
        return
    (error,) = log.commit([decision])
    if error is not None:
        raise error


def new_request_id() -> str:
    """A UUIDv7 (RFC 9562) in hex: time-ordered, so the audit log's request-id index
    grows at its end instead of touching a random page per record (fewer pages per
    commit to write and fsync), and still unguessable (74 random bits)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10)) & (1 << 80) - 1
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 9562 variant
    return uuid.UUID(int=value).hex
