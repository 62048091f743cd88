"""The embedded audit sink: one SQLite file in WAL mode, every commit fsynced.

Every commit is durable before it returns: ``synchronous=FULL`` (WAL mode's
default, NORMAL, may lose the last commits on power loss). Several server
processes on one host append to one chain: SQLite's write lock orders their
transactions. SQLite's file locks are not reliable on network filesystems: for
several hosts use PostgreSQL.

An append is usually one statement, its own transaction: an INSERT of all its
records, chained after the head as this sink last left it. Two triggers of the
writer connection (TEMP: nothing is added to the file) check, under the write
lock, that each row follows the head (``seq`` one more, ``prev_hash`` its
hash) and move the head on to it. When another process has appended meanwhile
the check fails and nothing is written; the append then takes the lock first
(``BEGIN IMMEDIATE``), reads the head and chains after it. One statement also
means one hand-over of the GIL: the audit thread releases it for the commit
and its fsync, and under load it waits for the event loop each time it wants
it back.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from xserve.audit.base import AuditSink, Head, Query, Snapshot, chain
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


CHAIN_TRIGGERS = """
CREATE TEMP TRIGGER IF NOT EXISTS xserve_audit_follows_head
BEFORE INSERT ON main.audit_records
WHEN NEW.seq IS NOT (SELECT seq + 1 FROM main.audit_head WHERE id = 1)
  OR NEW.prev_hash IS NOT (SELECT hash FROM main.audit_head WHERE id = 1)
BEGIN
    SELECT RAISE(ABORT, 'xserve: the audit chain head has moved');
END;
CREATE TEMP TRIGGER IF NOT EXISTS xserve_audit_moves_head
AFTER INSERT ON main.audit_records
BEGIN
    UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1;
END;
"""
"""On the writer connection only: each inserted record must follow the head, and becomes it."""

MAX_ROWS_PER_INSERT = 100


@lru_cache(maxsize=MAX_ROWS_PER_INSERT)
def _insert_sql(rows: int) -> str:
    """One INSERT of ``rows`` records."""
    return INSERT.format(marks="), (".join([", ".join("?" * 9)] * rows))


def _params(records: Sequence[Record]) -> list[Any]:
    return [v for r in records for v in row_of(r)]


class SQLiteSink(AuditSink):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._writer: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one transaction at a time on the writer connection
        self._head: Head | None = None
        """The head as this sink last left it (another process may have moved it since)."""
        self._rows_per_insert = 1

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
            conn.executescript(CHAIN_TRIGGERS)
            # Bound by SQLite's limit on parameters (9 per record), often 999.
            self._rows_per_insert = min(
                MAX_ROWS_PER_INSERT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 9
            )
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

    def append(self, bodies: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Number, chain and store ``bodies`` in one durable transaction."""
        guess, self._head = self._head, None  # known again once this append is committed
        if guess is not None and 0 < len(bodies) <= self._rows_per_insert:
            records = chain(bodies, guess)
            if self._insert_after_head(records):
                self.transactions += 1
                self._head = guess.after(records)
                return records
        # Another writer moved the head (or this is the first append): the careful way.
        records = super().append(bodies)
        if records:
            self._head = Head().after(records)
        return records

    def _insert_after_head(self, records: Sequence[Record]) -> bool:
        """Insert ``records`` in one autocommitted statement if they follow the head (the
        triggers check it); False, with nothing written, if they do not."""
        with self._lock:
            conn = self._writer
            if conn is None:
                raise AuditUnavailable(f"audit log {self.path}: not open")
            try:
                conn.execute(_insert_sql(len(records)), _params(records))
            except sqlite3.IntegrityError:
                return False  # the head moved, or another conflict: the careful way decides
            except sqlite3.Error as exc:
                raise AuditUnavailable(f"audit log {self.path}: {exc}") from exc
            return True

    def _read_head(self) -> Head:
        assert self._writer is not None
        row = self._writer.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return Head(int(row[0]), str(row[1]))

    def _write(self, records: Sequence[Record], head: Head) -> None:
        assert self._writer is not None
        for start in range(0, len(records), self._rows_per_insert):  # the triggers move the head
            part = records[start : start + self._rows_per_insert]
            self._writer.execute(_insert_sql(len(part)), _params(part))
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
