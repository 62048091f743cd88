"""Reading a stored body back, whatever it holds: never deeper than a bound.

A record's body is kept exactly as it was hashed. An older server accepted a client
``id`` nested hundreds of levels deep and stored it; decoding (and later encoding) such
a value recurses once per level and fails past Python's recursion limit. So a value
nested deeper than :data:`MAX_READ_DEPTH` is read as :data:`OMITTED` instead. A lone
UTF-16 surrogate (``"\\ud800"``: valid JSON, but no character, so no UTF-8 answer can
carry it) reads as U+FFFD. Only the reading changes: the stored text, and so the chain's
hashes, stay as they were.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_READ_DEPTH", "OMITTED", "read_body"]

MAX_READ_DEPTH = 64
"""Levels of nesting read as stored, the body itself being level 1."""

OMITTED = {"xserve_omitted": f"a value nested deeper than {MAX_READ_DEPTH} levels"}
"""What an over-deep value reads as (the stored text keeps it, and its hash)."""

_OMITTED_TEXT = json.dumps(OMITTED, separators=(",", ":"))
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_STEP = np.zeros(256, dtype=np.int64)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1


def _depths(text: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """For each character of ``text`` outside strings, the change of nesting depth it
    makes (0 inside strings), and the depth after it."""
    data = text.encode("ascii", "replace")  # one byte a character, whatever it holds
    if b"\\" in data:  # escapes: find the strings the careful way, and blank them
        blank = _STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', text)
        data = blank.encode("ascii", "replace")
        delta = _STEP[np.frombuffer(data, dtype=np.uint8)]
    else:  # no escapes: every quote opens or closes a string
        codes = np.frombuffer(data, dtype=np.uint8)
        delta = _STEP[codes]
        delta[(np.cumsum(codes == ord('"')) & 1).astype(bool)] = 0
    return delta, np.cumsum(delta)


def _prune(text: str) -> str:
    """``text`` with each value that opens at level MAX_READ_DEPTH + 1 replaced by
    OMITTED's text."""
    delta, depth = _depths(text)
    if depth.size == 0 or int(depth.max()) <= MAX_READ_DEPTH:
        return text
    opens = np.flatnonzero((delta == 1) & (depth == MAX_READ_DEPTH + 1))
    closes = np.flatnonzero((delta == -1) & (depth == MAX_READ_DEPTH))
    pieces, start = [], 0
    for first, last in zip(opens.tolist(), closes.tolist(), strict=False):
        pieces += [text[start:first], _OMITTED_TEXT]
        start = last + 1
    pieces.append(text[start:])
    return "".join(pieces)


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _without_surrogates(value: Any) -> Any:
    """``value`` with each lone surrogate in its strings (and keys) as U+FFFD; depth is
    bounded by then, so this recursion is too."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


def read_body(text: str) -> dict[str, Any] | None:
    """The body stored as ``text``, with any value nested deeper than MAX_READ_DEPTH read
    as OMITTED; None if it is not a JSON object (an edited record)."""
    # Cheap checks first: a body with few brackets cannot be too deep.
    if text.count("[") + text.count("{") > MAX_READ_DEPTH:
        text = _prune(text)
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    if "\\ud" in text or "\\uD" in text:  # a surrogate escape: paired ones read as one
        cleaned: dict[str, Any] = _without_surrogates(body)
        return cleaned
    return body
