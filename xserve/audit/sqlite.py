"""The embedded audit sink: one SQLite file in WAL mode, every commit fsynced.

``BEGIN IMMEDIATE`` takes SQLite's write lock before the head is read, so
several server processes on one host append to one chain; ``synchronous=FULL``
makes each commit durable before it returns (WAL mode's default, NORMAL, may
lose the last commits on power loss). SQLite's file locks are not reliable on
network filesystems: for several hosts use PostgreSQL.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from xserve.audit.base import AuditSink, Head, Query, Snapshot
from xserve.audit.record import Record
from xserve.audit.sql import COLUMNS, INSERT, record_of, row_of, select
from xserve.errors import AuditUnavailable

__all__ = ["SQLiteSink"]

BUSY_TIMEOUT_MS = 10_000
"""How long a writer waits for another process's transaction before giving up (503)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    request_id TEXT NOT NULL,
    caller TEXT,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_records_time ON audit_records (time);
CREATE INDEX IF NOT EXISTS audit_records_model ON audit_records (model, version);
CREATE INDEX IF NOT EXISTS audit_records_request ON audit_records (request_id);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
"""


class SQLiteSink(AuditSink):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._writer: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one transaction at a time on the writer connection

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN ourselves (the module's implicit
        # transactions would start a DEFERRED one, which does not lock the head).
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise AuditUnavailable(f"audit log {self.path}: cannot use WAL mode")
            conn.executescript(SCHEMA)  # each statement is atomic and idempotent
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT OR IGNORE INTO audit_head (id, seq, hash) VALUES (1, ?, ?)",
                (Head().seq, Head().hash),
            )
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            raise AuditUnavailable(f"audit log {self.path}: {exc}") from exc
        # Checkpoints stay SQLite's automatic ones, right after a commit: a background
        # checkpointer never catches up under steady load (each new commit lands before it
        # finishes), so the WAL would never restart and would grow without end.
        self._writer = conn

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._lock:
            conn = self._writer
            if conn is None:
                raise AuditUnavailable(f"audit log {self.path}: not open")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise AuditUnavailable(f"audit log {self.path}: {exc}") from exc

    def _read_head(self) -> Head:
        assert self._writer is not None
        row = self._writer.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return Head(int(row[0]), str(row[1]))

    def _write(self, records: Sequence[Record], head: Head) -> None:
        assert self._writer is not None
        marks = ", ".join("?" * 9)
        self._writer.executemany(INSERT.format(marks=marks), [row_of(r) for r in records])
        self._writer.execute(
            "UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (head.seq, head.hash)
        )

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        # A connection per read: readers never wait for the writer in WAL mode.
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise AuditUnavailable(f"audit log {self.path}: {exc}") from exc
        try:
            yield conn
        except sqlite3.Error as exc:
            raise AuditUnavailable(f"audit log {self.path}: {exc}") from exc
        finally:
            conn.close()

    def query(self, query: Query) -> list[Record]:
        sql, params = select(query, "?")
        with self._reader() as conn:
            return [record_of(row) for row in conn.execute(sql, params)]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        with self._reader() as conn:
            conn.execute("BEGIN")  # one read transaction: one WAL snapshot for head and rows
            try:
                row = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
                head = Head(int(row[0]), str(row[1])) if row else Head()
                rows = conn.execute(f"SELECT {COLUMNS} FROM audit_records ORDER BY seq")
                yield Snapshot(head, (record_of(r) for r in rows))
            finally:
                conn.execute("ROLLBACK")
