"""Reading the spans that real processes write to ``XSERVE_OTEL_FILE``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

ROW = [5.1, 3.5, 1.4, 0.2]  # iris's first background row


def traceparent(trace_id: str) -> str:
    return f"00-{trace_id}-00f067aa0ba902b7-01"


def spans_of(path: Path, trace_id: str, names: set[str], timeout: float = 30) -> list[Any]:
    """The spans of ``trace_id`` in the file, once every one of ``names`` is there (a
    worker writes its spans as they end, a moment after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        spans = [json.loads(line) for line in lines]
        mine = [s for s in spans if s["context"]["trace_id"] == f"0x{trace_id}"]
        if names <= {s["name"] for s in mine} or time.monotonic() > deadline:
            return mine
        time.sleep(0.1)


def one(spans: list[Any], name: str) -> Any:
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, sorted(s["name"] for s in spans)
    return found[0]
