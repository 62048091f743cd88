"""The embedded audit sink: one SQLite file in WAL mode, every answered commit fsynced.

Commits run at ``synchronous=NORMAL`` and :meth:`SQLiteSink.sync` fdatasyncs the WAL
outside the write lock, so the next commit is written while an fsync runs: as durable as
``synchronous=FULL``, for less (the argument is in ``docs/audit-durability.md``). Processes
on one host share the file; SQLite's locks are not reliable on network filesystems, so
several hosts use PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from xserve.audit.base import MAX_PAGE, AuditSink, Head, NotAnAuditLog, Query, Snapshot, chain
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
from xserve.security.files import FILE_MODE, private_folder

__all__ = ["SQLiteSink"]

log = logging.getLogger(__name__)

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
{checkpoints};
""".format(checkpoints=CHECKPOINTS_TABLE.format(integer="INTEGER"))


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


def _fdatasync(fd: int) -> None:
    # Looked up at each call, so a disk fault can be injected at the OS boundary in tests.
    getattr(os, "fdatasync", os.fsync)(fd)  # macOS has no fdatasync


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
        self._wal: int | None = None
        """The WAL file, fdatasynced by :meth:`sync`."""
        self._syncs = threading.Condition()  # the fsync bookkeeping below
        self._written = 0
        """Writes returned so far; the first ``_synced`` of them are durable."""
        self._synced = 0
        self._syncing = 0
        """fsyncs in flight (close waits for them)."""
        self._failed: AuditUnavailable | None = None
        self._read_only = False
        """Opened read-only: every connection is a ``mode=ro`` one, and there is no writer."""
        self._has_checkpoints = True
        """The store has the checkpoints table (a log from before them, read-only, has not)."""

    def _connect(self) -> sqlite3.Connection:
        if self._read_only:  # SQLite itself refuses to write, or to create the file
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            return sqlite3.connect(
                uri,
                uri=True,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        # isolation_level=None: we issue BEGIN ourselves (the module's implicit
        # transactions would start a DEFERRED one, which does not lock the head).
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = NORMAL")  # sync() makes commits durable
        return conn

    def _open_read_only(self) -> None:
        if not self.path.is_file():
            raise NotAnAuditLog(f"not an audit log: no audit log at {self.path}")
        self._read_only = True
        try:
            with contextlib.closing(self._connect()) as conn:
                tables = {
                    str(row[0])
                    for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
                raise NotAnAuditLog(f"not an audit log: {self.path} is not a database") from None
            raise AuditUnavailable(f"audit log {self.path}: {exc}") from exc
        missing = sorted({"audit_records", "audit_head"} - tables)
        if missing:
            raise NotAnAuditLog(f"not an audit log: {self.path} has no table {', '.join(missing)}")
        self._has_checkpoints = "audit_checkpoints" in tables

    def _create_file(self) -> None:
        """Create the database file 0600 in a 0700 folder (SQLite gives its -wal and -shm
        files the database file's mode); an existing file keeps its mode, with a warning
        if others may read it."""
        private_folder(self.path.parent)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        if mode & ~FILE_MODE:
            log.warning(
                "audit log %s has mode %o: others may read the records; chmod 600 it "
                "(SQLite gives its -wal and -shm files the same mode)",
                self.path,
                mode,
            )

    def open(self, read_only: bool = False) -> None:
        if read_only:
            self._open_read_only()
            return
        try:
            self._create_file()
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
            # The connection created the WAL file when it first read the database.
            self._wal = os.open(f"{self.path}-wal", os.O_RDONLY)
        except (sqlite3.Error, OSError) as exc:
            raise AuditUnavailable(f"audit log {self.path}: {exc}") from exc
        # Checkpoints stay SQLite's automatic ones: a background checkpointer never catches
        # up under steady load, and the WAL would grow without end.
        self._writer = conn

    def close(self) -> None:
        with self._lock, self._syncs:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            while self._syncing:  # their fd stays open until they return
                self._syncs.wait()
            if self._wal is not None:
                os.close(self._wal)
                self._wal = None

    def sync(self) -> None:
        wanted = self._written  # the caller's own write is counted (it returned before)
        with self._syncs:
            if self._synced >= wanted:  # an fsync that began after it has ended
                return
        self._sync_wal()

    def _sync_wal(self) -> None:
        """fdatasync the WAL: every commit so far, by any process, is durable after it
        (the WAL's pages are the file's, whoever wrote them)."""
        with self._syncs:
            if self._failed is not None:
                raise self._failed
            if self._wal is None:
                raise AuditUnavailable(f"audit log {self.path}: not open")
            fd, covered = self._wal, self._written  # all written so far goes in this fsync
            self._syncing += 1
        # Outside the lock: fsyncs overlap (each waits for the pages the others are writing).
        try:
            _fdatasync(fd)
        except OSError as exc:
            with self._syncs:
                self._failed = AuditUnavailable(
                    f"audit log {self.path}: fsync of the WAL failed ({exc}); records may "
                    "be lost, so no later decision is answered: restart once the disk is sound"
                )
            raise self._failed from exc
        finally:
            with self._syncs:
                self._syncing -= 1
                self._syncs.notify_all()
        with self._syncs:
            self._synced = max(self._synced, covered)

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

    def write(self, bodies: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Number, chain and commit ``bodies`` in one transaction (durable after sync)."""
        if self._failed is not None:
            raise self._failed
        guess, self._head = self._head, None  # known again once this write is committed
        if guess is not None and 0 < len(bodies) <= self._rows_per_insert:
            records = chain(bodies, guess)
            if self._insert_after_head(records):
                self.transactions += 1
                self._head = guess.after(records)
                self._wrote()
                return records
        # Another writer moved the head (or this is the first write): the careful way.
        records = super().write(bodies)
        if records:
            self._head = Head().after(records)
        self._wrote()
        return records

    def _wrote(self) -> None:
        with self._lock:
            self._written += 1

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

    def head(self) -> Head:
        with self._reader() as conn:
            row = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return Head(int(row[0]), str(row[1])) if row else Head()

    def durable_head(self) -> Head:
        head = self.head()
        self._sync_wal()  # its commit may not be fsynced yet (synchronous=NORMAL)
        return head

    def add_checkpoint(self, checkpoint: Checkpoint) -> bool:
        if self._failed is not None:
            raise self._failed
        with self._exclusive():
            assert self._writer is not None
            added = self._writer.execute(insert_checkpoint("?"), checkpoint_row(checkpoint))
            stored = added.rowcount == 1
        self._sync_wal()
        return stored

    def checkpoints(self, after: int = -1, limit: int = MAX_PAGE) -> list[Checkpoint]:
        if not self._has_checkpoints:
            return []
        with self._reader() as conn:
            rows = conn.execute(select_checkpoints("?"), (after, max(1, min(limit, MAX_PAGE))))
            return [checkpoint_of(row) for row in rows]

    def latest_checkpoint(self) -> Checkpoint | None:
        if not self._has_checkpoints:
            return None
        with self._reader() as conn:
            row = conn.execute(latest_checkpoint()).fetchone()
        return None if row is None else checkpoint_of(row)

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
