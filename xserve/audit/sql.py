"""SQL shared by the SQLite and PostgreSQL sinks (both speak this much standard SQL)."""

from __future__ import annotations

from typing import Any

from xserve.audit.base import MAX_PAGE, Query
from xserve.audit.checkpoint import Checkpoint
from xserve.audit.record import Record

__all__ = [
    "CHECKPOINTS_TABLE",
    "CHECKPOINT_COLUMNS",
    "COLUMNS",
    "INSERT",
    "checkpoint_of",
    "checkpoint_row",
    "insert_checkpoint",
    "latest_checkpoint",
    "record_of",
    "row_of",
    "select",
    "select_checkpoints",
]

COLUMNS = "seq, time, request_id, caller, model, version, body, prev_hash, hash"
INSERT = f"INSERT INTO audit_records ({COLUMNS}) VALUES ({{marks}})"

CHECKPOINT_COLUMNS = "seq, hash, time, key_id, signature"
CHECKPOINTS_TABLE = """CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq {integer} PRIMARY KEY,
    hash TEXT NOT NULL,
    time TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL)"""
"""Signed checkpoints of the head (``xserve.audit.checkpoint``), one per sequence number:
whichever process signs a head first stores it; the others' copies are dropped."""


def insert_checkpoint(mark: str) -> str:
    marks = ", ".join([mark] * 5)
    return (
        f"INSERT INTO audit_checkpoints ({CHECKPOINT_COLUMNS}) VALUES ({marks}) "
        "ON CONFLICT (seq) DO NOTHING"
    )


def select_checkpoints(mark: str) -> str:
    """Checkpoints above a sequence number, in order, at most a number of them."""
    return (
        f"SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE seq > {mark} "
        f"ORDER BY seq LIMIT {mark}"
    )


def latest_checkpoint() -> str:
    return f"SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"


def checkpoint_row(c: Checkpoint) -> tuple[Any, ...]:
    return (c.seq, c.hash, c.time, c.key_id, c.signature)


def checkpoint_of(row: tuple[Any, ...]) -> Checkpoint:
    seq, hash_, time, key, signature = row
    return Checkpoint(int(seq), str(hash_), str(time), str(key), str(signature))


def row_of(r: Record) -> tuple[Any, ...]:
    return (r.seq, r.time, r.request_id, r.caller, r.model, r.version, r.body, r.prev_hash, r.hash)


def record_of(row: tuple[Any, ...]) -> Record:
    seq, time, request_id, caller, model, version, body, prev_hash, hash_ = row
    return Record(int(seq), time, request_id, caller, model, version, body, prev_hash, hash_)


def select(query: Query, mark: str) -> tuple[str, list[Any]]:
    """The filtered, paged SELECT for ``query``, with ``mark`` as the placeholder."""
    clauses = ["seq > " + mark]
    params: list[Any] = [query.after]
    for column, op, value in (
        ("time", ">=", query.since),
        ("time", "<", query.until),
        ("model", "=", query.model),
        ("version", "=", query.version),
        ("request_id", "=", query.request_id),
    ):
        if value is not None:
            clauses.append(f"{column} {op} {mark}")
            params.append(value)
    params.append(max(1, min(query.limit, MAX_PAGE)))
    sql = (
        f"SELECT {COLUMNS} FROM audit_records WHERE {' AND '.join(clauses)} "
        f"ORDER BY seq LIMIT {mark}"
    )
    return sql, params
