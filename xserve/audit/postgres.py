"""The scale-out audit sink: PostgreSQL, shared by any number of hosts.

Appends lock the single chain-head row (``SELECT ... FOR UPDATE``) before
reading it, so writers on every host take turns at the head and build one
chain; ``synchronous_commit = on`` (forced per session) makes each commit
durable on the server before it returns. Run the tables in their own schema by
adding ``?options=-csearch_path%3Dmyschema`` to the URL.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg

from xserve.audit.base import MAX_PAGE, AuditSink, Head, NotAnAuditLog, Query, Snapshot
from xserve.audit.checkpoint import Checkpoint
from xserve.audit.record import Record
from xserve.audit.sql import (
    CHECKPOINTS_TABLE,
    COLUMNS,
    INSERT,
    checkpoint_of,
    checkpoint_row,
    insert_checkpoint,
    latest_checkpoint,
    record_of,
    row_of,
    select,
    select_checkpoints,
)
from xserve.errors import AuditUnavailable

__all__ = ["PostgresSink"]

CONNECT_TIMEOUT_S = 5
SCAN_BATCH = 2000
_SCHEMA_LOCK = 0x78736572  # advisory lock key: concurrent first starts create the tables once

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit_records (
        seq BIGINT PRIMARY KEY,
        time TEXT NOT NULL,
        request_id TEXT NOT NULL,
        caller TEXT,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        body TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS audit_records_time ON audit_records (time)",
    "CREATE INDEX IF NOT EXISTS audit_records_model ON audit_records (model, version)",
    "CREATE INDEX IF NOT EXISTS audit_records_request ON audit_records (request_id)",
    """CREATE TABLE IF NOT EXISTS audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL)""",
    CHECKPOINTS_TABLE.format(integer="BIGINT"),
)


class PostgresSink(AuditSink):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._lock = threading.Lock()  # one transaction at a time on the writer connection
        self._uncommitted = False
        """Whether the last failed append certainly committed nothing (failed before COMMIT)."""
        self._read_only = False
        """Opened read-only: every session is ``default_transaction_read_only``."""
        self._has_checkpoints = True
        """The store has the checkpoints table (a log from before them, read-only, has not)."""

    def _where(self) -> str:
        """The URL without its password, for error messages."""
        try:
            info = psycopg.conninfo.conninfo_to_dict(self.url)
        except psycopg.Error:
            return "postgresql"
        host, port, db = info.get("host", ""), info.get("port", 5432), info.get("dbname", "")
        return f"postgresql://{host}:{port}/{db}"

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        conn.execute("SET synchronous_commit TO on")
        if self._read_only:  # the server refuses any write in this session's transactions
            conn.execute("SET default_transaction_read_only TO on")
        return conn

    def _unavailable(self, exc: BaseException) -> AuditUnavailable:
        return AuditUnavailable(f"audit log {self._where()}: {type(exc).__name__}: {exc}")

    def _open_read_only(self) -> None:
        self._read_only = True
        try:
            with self._connect() as conn:
                row = conn.execute(
                    "SELECT to_regclass('audit_records') IS NOT NULL, "
                    "to_regclass('audit_head') IS NOT NULL, "
                    "to_regclass('audit_checkpoints') IS NOT NULL"
                ).fetchone()
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc
        missing = [
            t for t, ok in zip(("audit_records", "audit_head"), row or (), strict=False) if not ok
        ]
        if row is None or missing:
            raise NotAnAuditLog(
                f"not an audit log: {self._where()} has no table {', '.join(missing)}"
            )
        self._has_checkpoints = bool(row[2])

    def open(self, read_only: bool = False) -> None:
        if read_only:
            self._open_read_only()
            return
        try:
            with self._connect() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO audit_head (id, seq, hash) VALUES (1, %s, %s) "
                    "ON CONFLICT (id) DO NOTHING",
                    (Head().seq, Head().hash),
                )
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def write(self, bodies: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Durable at once: ``synchronous_commit`` is on."""
        if self._read_only:
            raise AuditUnavailable(f"audit log {self._where()}: opened read-only")
        reused = self._conn is not None
        try:
            return super().write(bodies)
        except AuditUnavailable:
            # A kept connection the server has since dropped (a restart, a failover) fails
            # at its first statement: once more on a new one, if nothing can have committed.
            if not (reused and self._uncommitted):
                raise
            return super().write(bodies)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._lock:
            committing = False
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                with self._conn.transaction():
                    yield
                    committing = True  # the COMMIT runs as the block exits
            except psycopg.Error as exc:
                # The connection may be broken: start afresh on the next append.
                self._drop()
                self._uncommitted = not committing
                raise self._unavailable(exc) from exc

    def _read_head(self) -> Head:
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE"
        ).fetchone()
        if row is None:
            raise AuditUnavailable(f"audit log {self._where()}: chain head row missing")
        return Head(int(row[0]), str(row[1]))  # type: ignore[call-overload]

    def _write(self, records: Sequence[Record], head: Head) -> None:
        assert self._conn is not None
        marks = ", ".join(["%s"] * 9)
        with self._conn.cursor() as cur:
            cur.executemany(INSERT.format(marks=marks), [row_of(r) for r in records])
            cur.execute(
                "UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1", (head.seq, head.hash)
            )

    @contextlib.contextmanager
    def _reader(self, snapshot: bool = False) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        try:
            with self._connect() as conn:
                if snapshot:
                    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                    conn.read_only = True
                yield conn
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc

    def query(self, query: Query) -> list[Record]:
        sql, params = select(query, "%s")
        with self._reader() as conn:
            return [record_of(row) for row in conn.execute(sql, params)]

    def head(self) -> Head:
        with self._reader() as conn:
            row = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return Head(int(row[0]), str(row[1])) if row else Head()  # type: ignore[call-overload]

    def add_checkpoint(self, checkpoint: Checkpoint) -> bool:
        if self._read_only:
            raise AuditUnavailable(f"audit log {self._where()}: opened read-only")
        with self._exclusive():
            assert self._conn is not None
            added = self._conn.execute(insert_checkpoint("%s"), checkpoint_row(checkpoint))
            return added.rowcount == 1

    def checkpoints(self, after: int = -1, limit: int = MAX_PAGE) -> list[Checkpoint]:
        if not self._has_checkpoints:
            return []
        with self._reader() as conn:
            rows = conn.execute(select_checkpoints("%s"), (after, max(1, min(limit, MAX_PAGE))))
            return [checkpoint_of(row) for row in rows]

    def latest_checkpoint(self) -> Checkpoint | None:
        if not self._has_checkpoints:
            return None
        with self._reader() as conn:
            row = conn.execute(latest_checkpoint()).fetchone()
        return None if row is None else checkpoint_of(row)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        with self._reader(snapshot=True) as conn, conn.transaction():
            row = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            head = Head(int(row[0]), str(row[1])) if row else Head()  # type: ignore[call-overload]
            # A server-side cursor: the log may be far larger than memory.
            with conn.cursor(name="xserve_audit_scan") as cur:
                cur.itersize = SCAN_BATCH
                cur.execute(f"SELECT {COLUMNS} FROM audit_records ORDER BY seq")
                yield Snapshot(head, (record_of(r) for r in cur))
