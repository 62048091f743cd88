"""One audit record: its canonical serialisation and its link in the hash chain.

A record's *body* is a JSON object holding everything about one decision, its
sequence number included (so that moving a record is as visible as editing
it). The canonical text of a body is JSON with sorted keys, no whitespace,
ASCII only and floats written by ``repr`` (the shortest text that reads back
to the same double), so the same body always gives the same bytes whatever
wrote it. Non-finite floats have no JSON form: a NaN (a missing input) is
written as ``null``, infinities as the strings ``"Infinity"``/``"-Infinity"``.

Each record carries the previous record's hash; its own hash is
``sha256(prev_hash + canonical(body))`` in hex. The first record's previous
hash is :data:`GENESIS`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np

from xserve.audit.reading import read_body

__all__ = [
    "GENESIS",
    "Record",
    "canonical",
    "chain_hash",
    "plain",
    "seal",
    "timestamp",
]

GENESIS = "0" * 64
"""The previous hash of the first record."""


def plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays turned into JSON types, NaN into None."""
    if isinstance(value, float | np.floating):
        f = float(value)
        if math.isnan(f):
            return None
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"
        return f
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, Mapping):
        # Keys as json.dumps writes them, so both paths of canonical() agree.
        return {
            k if isinstance(k, str | int | float) or k is None else str(k): plain(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _numpy(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class _NotRepr(Exception):
    """A float that ``msgspec`` writes otherwise than ``repr``."""


def _float(text: str) -> float:
    # msgspec writes a float's shortest digits as repr does, but where repr switches to
    # an exponent (below 1e-4, from 1e16 up) it writes "0.00001", "1.5e-7" or "1e16".
    if "e" in text or text.lstrip("-").startswith("0.0000"):
        raise _NotRepr
    return float(text)


_ENCODER = msgspec.json.Encoder(enc_hook=_numpy, order="sorted")
_CHECKER = msgspec.json.Decoder(float_hook=_float)


def _json(body: Mapping[str, Any]) -> str:
    try:
        # The C encoder, no copy: bodies are nearly always plain JSON already.
        return json.dumps(
            body,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
            default=_numpy,
        )
    except ValueError:  # a NaN or an infinity somewhere: rewrite it, then encode
        return json.dumps(
            plain(body), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )


def _msgspec(body: Mapping[str, Any]) -> str | None:
    try:
        data = _ENCODER.encode(body)
        if (
            data.isascii()
            and b"\\" not in data
            and b"\x7f" not in data  # DEL: json escapes it, msgspec does not
            and _CHECKER.decode(data) == body
        ):
            return data.decode("ascii")
    except Exception:  # whatever msgspec refuses (or changes), json.dumps decides
        return None
    return None


def canonical(body: Mapping[str, Any]) -> str:
    """The one text of ``body`` that is hashed (see the module docstring).

    That text is ``json.dumps``'s (sorted keys, compact, ASCII, floats by ``repr``).
    msgspec writes the same bytes in about half the time for most bodies, so its text
    is taken when it provably is that one: ASCII without escapes (so every string is
    written alike), and reading it back gives ``body`` again (no value changed on the
    way: a set, a date, a NaN or an infinity would not) with every float written as
    ``repr`` writes it. Any other body goes to ``json.dumps``."""
    return _msgspec(body) or _json(body)


def chain_hash(prev_hash: str, text: str) -> str:
    return hashlib.sha256((prev_hash + text).encode("ascii")).hexdigest()


_second: tuple[int, str] = (-1, "")


def timestamp(moment: datetime | None = None) -> str:
    """UTC time as fixed-width ISO 8601 with microseconds, so text order is time order."""
    global _second
    if moment is not None:
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # Now: strftime once a second (it costs more than the rest of a record's fields).
    now = time.time_ns() // 1000
    seconds, micros = divmod(now, 1_000_000)
    cached, text = _second
    if cached != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second = (seconds, text)
    return f"{text}.{micros:06d}Z"


@dataclass(frozen=True)
class Record:
    """A stored record: the indexed columns, the canonical body and the two hashes."""

    seq: int
    time: str
    request_id: str
    caller: str | None
    model: str
    version: str
    body: str
    """The canonical JSON text that was hashed."""
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """The body as an object, with ``prev_hash`` and ``hash`` added: whatever is stored
        reads (a value nested too deep as a marker; a body that is no JSON object, as its
        columns and ``unreadable``), for verification to judge."""
        out = read_body(self.body)
        if out is None:
            out = {
                "seq": self.seq,
                "time": self.time,
                "request_id": self.request_id,
                "caller": self.caller,
                "model": self.model,
                "version": self.version,
                "unreadable": "the stored body is not a JSON object",
            }
        out["prev_hash"] = self.prev_hash
        out["hash"] = self.hash
        return out


def seal(body: Mapping[str, Any], seq: int, prev_hash: str) -> Record:
    """Number ``body`` and chain it after ``prev_hash``: the record to store."""
    numbered = {**body, "seq": seq}
    text = canonical(numbered)
    return Record(
        seq=seq,
        time=str(numbered["time"]),
        request_id=str(numbered["request_id"]),
        caller=numbered.get("caller"),
        model=str(numbered["model"]),
        version=str(numbered["version"]),
        body=text,
        prev_hash=prev_hash,
        hash=chain_hash(prev_hash, text),
    )
