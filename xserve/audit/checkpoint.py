"""Signed checkpoints of the chain head: a record that proves itself against insiders too.

The hash chain alone is unkeyed: whoever can write the store can alter a record and
recompute every hash after it, head included, and the chain verifies again. A checkpoint
is the head (sequence number and hash) at one moment, signed with an Ed25519 key the
store's writers do not hold. Once a checkpoint has left the host, any rewrite of a
record at or before its sequence number changes that record's hash and is found;
records after the last checkpoint that left are not covered by it.

The signature is over a canonical encoding: the line ``xserve-audit-checkpoint-v1``,
then the JSON object of ``hash``, ``key_id``, ``seq`` and ``time`` with sorted keys and
no whitespace. A checkpoint is written as one JSON object (a line of a ``.jsonl`` file)
with ``signature`` added, base64.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from xserve.audit.base import Head
from xserve.audit.record import timestamp
from xserve.security.signing import key_id, signature_holds

__all__ = [
    "MAX_CHECKPOINT_FILE",
    "Checkpoint",
    "CheckpointError",
    "Every",
    "Signer",
    "read_checkpoints",
    "signature_fault",
]

DOMAIN = b"xserve-audit-checkpoint-v1\n"
"""Prefixed to what is signed: the key's signature means this and nothing else."""

MAX_CHECKPOINT_FILE = 256 * 1024 * 1024
"""A checkpoint line is about 300 bytes: a file larger than this is not a checkpoint file."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_SEQ = 2**63 - 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (malformed), or a bad ``checkpoint_every``."""


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    """The chain head's sequence number (0: the empty chain)."""
    hash: str
    """The hash of record ``seq`` (GENESIS for the empty chain)."""
    time: str
    """When it was signed (ISO 8601 UTC, as in the records)."""
    key_id: str
    """The fingerprint of the public key that verifies it."""
    signature: str
    """Ed25519 over :meth:`message`, base64."""

    @property
    def head(self) -> Head:
        return Head(self.seq, self.hash)

    def message(self) -> bytes:
        return message(self.seq, self.hash, self.time, self.key_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "time": self.time,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> Checkpoint:
        """A checkpoint from its JSON object; CheckpointError naming what is wrong."""
        if not isinstance(data, Mapping):
            raise CheckpointError("not a JSON object")
        seq, hash_ = data.get("seq"), data.get("hash")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= _MAX_SEQ:
            raise CheckpointError("'seq' must be an integer from 0 to 2^63-1")
        if not isinstance(hash_, str) or not _HEX64.fullmatch(hash_):
            raise CheckpointError("'hash' must be 64 lowercase hex digits")
        fields = {}
        for name in ("time", "key_id", "signature"):
            value = data.get(name)
            if not isinstance(value, str) or not value or len(value) > 200:
                raise CheckpointError(f"{name!r} must be a non-empty string")
            fields[name] = value
        return cls(seq, hash_, fields["time"], fields["key_id"], fields["signature"])


def message(seq: int, hash_: str, time: str, key: str) -> bytes:
    """The canonical bytes a checkpoint's signature is over."""
    fields = {"hash": hash_, "key_id": key, "seq": seq, "time": time}
    return DOMAIN + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


class Signer:
    """Signs chain heads with one private key (about 50 µs a signature)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.key_id = key_id(private.public_key())

    def sign(self, head: Head, time: str | None = None) -> Checkpoint:
        time = time or timestamp()
        signature = self._private.sign(message(head.seq, head.hash, time, self.key_id))
        return Checkpoint(
            head.seq, head.hash, time, self.key_id, base64.b64encode(signature).decode()
        )


def signature_fault(checkpoint: Checkpoint, keys: Mapping[str, Ed25519PublicKey]) -> str | None:
    """Why ``checkpoint``'s signature does not hold under any of ``keys`` (by key id), or
    None when it holds."""
    public = keys.get(checkpoint.key_id)
    if public is None:
        given = ", ".join(sorted(keys)) or "none"
        return f"signed by key {checkpoint.key_id}, not by a given public key ({given})"
    try:
        signature = base64.b64decode(checkpoint.signature, validate=True)
    except (binascii.Error, ValueError):
        return "the signature is not base64 (forged or damaged)"
    if len(signature) != 64 or not signature_holds(public, signature, checkpoint.message()):
        return "the signature does not verify (forged or altered)"
    return None


def read_checkpoints(path: Path) -> Iterator[tuple[str, Checkpoint]]:
    """Every checkpoint in ``path`` (a JSON object a line; blank lines skipped) with where
    it is (``path:line``); CheckpointError naming the line that cannot be read."""
    try:
        if path.stat().st_size > MAX_CHECKPOINT_FILE:
            raise CheckpointError(f"{path}: too large to be a checkpoint file")
        handle = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise CheckpointError(f"{path}: {exc.strerror or exc}") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
            except (ValueError, RecursionError):
                raise CheckpointError(f"checkpoint {where}: not JSON") from None
            try:
                yield where, Checkpoint.from_dict(data)
            except CheckpointError as exc:
                raise CheckpointError(f"checkpoint {where}: {exc}") from None


@dataclass(frozen=True)
class Every:
    """How often the head is signed: every ``records`` records or ``seconds`` seconds."""

    records: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str) -> Every:
        """``1000`` (records) or ``300s`` (seconds)."""
        value = text.strip().lower()
        try:
            if value.endswith("s"):
                seconds = float(value[:-1])
                if 0.01 <= seconds <= 86_400 * 365:
                    return cls(seconds=seconds)
            else:
                records = int(value)
                if 1 <= records <= _MAX_SEQ:
                    return cls(records=records)
        except ValueError:
            pass
        raise CheckpointError(
            f"XSERVE_AUDIT_CHECKPOINT_EVERY: {text!r}: expected a number of records "
            "(1000) or of seconds (300s)"
        )
