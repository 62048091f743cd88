"""``xserve audit verify`` and ``export`` open the store read-only: a store that is not an
audit log exits 2 and is left exactly as it was (no file, no tables created)."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result

from tests.audit_support import body, open_sink, pg_schema
from xserve.audit import sink_from_url
from xserve.audit.base import NotAnAuditLog
from xserve.cli.main import main
from xserve.errors import AuditUnavailable


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, ["audit", *args])


def _tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pg_tables(url: str) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    return {str(r[0]) for r in rows}


@pytest.mark.parametrize("command", ["verify", "export"])
def test_an_empty_sqlite_file_is_not_an_audit_log_and_stays_empty(
    tmp_path: Path, command: str
) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    result = _run(command, "--url", f"sqlite:///{path}")
    assert result.exit_code == 2, result.output
    assert "not an audit log" in result.output
    assert path.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]  # no -wal, no -shm


@pytest.mark.parametrize("command", ["verify", "export"])
def test_another_sqlite_database_is_not_an_audit_log_and_is_left_unchanged(
    tmp_path: Path, command: str
) -> None:
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
    before = _sha(path)
    result = _run(command, "--url", f"sqlite:///{path}")
    assert result.exit_code == 2, result.output
    assert "not an audit log" in result.output
    assert _sha(path) == before
    assert _tables(path) == {"t"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_a_file_that_is_no_database_is_not_an_audit_log(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not sqlite at all, just some text that is long enough" * 4)
    before = _sha(path)
    result = _run("verify", "--url", f"sqlite:///{path}")
    assert result.exit_code == 2, result.output
    assert "not an audit log" in result.output
    assert _sha(path) == before


@pytest.mark.parametrize("command", ["verify", "export"])
def test_a_missing_sqlite_file_is_not_created(tmp_path: Path, command: str) -> None:
    path = tmp_path / "sub" / "missing.db"
    result = _run(command, "--url", f"sqlite:///{path}")
    assert result.exit_code == 2, result.output
    assert "not an audit log" in result.output
    assert not path.exists() and not path.parent.exists()


@pytest.mark.parametrize("command", ["verify", "export"])
def test_a_postgres_schema_without_the_tables_is_not_an_audit_log(command: str) -> None:
    with pg_schema() as url:
        result = _run(command, "--url", url)
        assert result.exit_code == 2, result.output
        assert "not an audit log" in result.output
        assert _pg_tables(url) == set()


def test_a_postgres_schema_with_other_tables_is_left_unchanged() -> None:
    with pg_schema() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x INTEGER)")
        result = _run("verify", "--url", url)
        assert result.exit_code == 2, result.output
        assert _pg_tables(url) == {"t"}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_real_log_verifies_and_exports_read_only(tmp_path: Path, backend: str) -> None:
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'audit.db'}"
        else:
            url = stack.enter_context(pg_schema())
        sink = open_sink(url)
        try:
            sink.append([body(1), body(2), body(3)])
        finally:
            sink.close()
        ok = _run("verify", "--url", url)
        assert ok.exit_code == 0 and "3 records, chain intact" in ok.output, ok.output
        out = tmp_path / "out.jsonl"
        exported = _run("export", "--url", url, "--out", str(out))
        assert exported.exit_code == 0, exported.output
        assert len(out.read_text().splitlines()) == 3
        # A broken chain is still exit 1, not 2.
        if backend == "sqlite":
            with contextlib.closing(sqlite3.connect(tmp_path / "audit.db")) as conn:
                conn.execute("DELETE FROM audit_records WHERE seq = 2")
                conn.commit()
        else:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DELETE FROM audit_records WHERE seq = 2")
        bad = _run("verify", "--url", url)
        assert bad.exit_code == 1 and "record 2" in bad.output, bad.output


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_sink_opened_read_only_refuses_to_write(tmp_path: Path, backend: str) -> None:
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'audit.db'}"
        else:
            url = stack.enter_context(pg_schema())
        open_sink(url).close()  # the tables, created read-write
        sink = sink_from_url(url)
        assert sink is not None
        sink.open(read_only=True)
        try:
            with pytest.raises(AuditUnavailable):
                sink.append([body(1)])
        finally:
            sink.close()
        other = sink_from_url(url.replace("audit.db", "none.db"))
        if backend == "sqlite":
            assert other is not None
            with pytest.raises(NotAnAuditLog):
                other.open(read_only=True)
