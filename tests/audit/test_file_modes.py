"""What xserve creates to hold records or secrets is its owner's alone: files 0600 in
folders 0700, whatever the umask lets through; what exists keeps its mode."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audit_support import body, open_sink, pg_schema
from xserve.audit.factory import digest_key_for
from xserve.security.files import append_line


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    """A umask that lets group and others read: only xserve's own modes keep them out."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_sqlite_store_and_digest_key_are_private(tmp_path: Path) -> None:
    db = tmp_path / "made" / "by" / "xserve" / "audit.db"
    url = f"sqlite:///{db}"
    sink = open_sink(url)
    try:
        sink.append([body(1)])
        key = digest_key_for(url, None)
        assert len(key) == 64
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), db.with_name("audit.db.digest-key")):
            assert _mode(path) == 0o600, path
        for folder in (db.parent, db.parent.parent, db.parent.parent.parent):
            assert _mode(folder) == 0o700, folder
    finally:
        sink.close()


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    os.chmod(shared, 0o750)
    append_line(shared / "inner" / "checkpoints.jsonl", "{}")
    assert _mode(shared) == 0o750
    assert _mode(shared / "inner") == 0o700
    assert _mode(shared / "inner" / "checkpoints.jsonl") == 0o600
    append_line(shared / "inner" / "checkpoints.jsonl", "{}")
    assert (shared / "inner" / "checkpoints.jsonl").read_text() == "{}\n{}\n"


def test_postgres_digest_key_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pg_schema() as url:
        digest_key_for(url, None)
    assert _mode(tmp_path / "audit") == 0o700
    assert _mode(tmp_path / "audit" / "digest.key") == 0o600


def test_an_existing_store_readable_by_others_is_kept_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "audit.db"
    db.touch(mode=0o644)
    os.chmod(db, 0o644)
    with caplog.at_level(logging.WARNING, logger="xserve.audit.sqlite"):
        sink = open_sink(f"sqlite:///{db}")
    sink.close()
    assert _mode(db) == 0o644  # the operator's choice, not silently changed
    assert any("mode 644" in m and str(db) in m for m in caplog.messages), caplog.messages
