"""SQL shared by the SQLite and PostgreSQL sinks (both speak this much standard SQL)."""

from __future__ import annotations

from typing import Any

from xserve.audit.base import MAX_PAGE, Query
from xserve.audit.record import Record

__all__ = ["COLUMNS", "INSERT", "record_of", "row_of", "select"]

COLUMNS = "seq, time, request_id, caller, model, version, body, prev_hash, hash"
INSERT = f"INSERT INTO audit_records ({COLUMNS}) VALUES ({{marks}})"


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
