"""Personal features are always digested under a key: XSERVE_AUDIT_DIGEST_KEY, or a
random key file created beside the store on first start and read on later ones."""

from __future__ import annotations

import hashlib
import hmac
import logging
import multiprocessing
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from xserve.audit import audit_log_from_settings
from xserve.audit.entry import personal_digest
from xserve.audit.factory import digest_key_for, digest_key_path
from xserve.jobs.run import WorkerContext, worker_audit_log
from xserve.settings import Settings


def _settings(tmp_path: Path, key: str | None = None) -> Settings:
    return Settings(
        models_dir=tmp_path / "models",
        audit_url=f"sqlite:///{tmp_path / 'audit' / 'audit.db'}",
        audit_digest_key=key,
    )


def test_without_a_key_a_key_file_is_created_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("XSERVE_AUDIT_DIGEST_KEY", raising=False)
    settings = _settings(tmp_path)
    with caplog.at_level(logging.WARNING, logger="xserve.audit.factory"):
        audit = audit_log_from_settings(settings)
    assert audit is not None
    path = tmp_path / "audit" / "audit.db.digest-key"
    assert digest_key_path(settings.audit_url) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    assert len(bytes.fromhex(key)) == 32
    assert audit.digest_key == key.encode()
    digest = personal_digest(35, audit.digest_key)
    assert digest == "hmac-sha256:" + hmac.new(key.encode(), b"35", hashlib.sha256).hexdigest()
    assert digest != "sha256:" + hashlib.sha256(b"35").hexdigest()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in m for m in warnings)
    assert not any(key in m for m in caplog.messages)
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xserve.audit.factory"):
        again = audit_log_from_settings(settings)  # a restart
    assert again is not None and again.digest_key == key.encode()
    assert not [r for r in caplog.records if "created" in r.getMessage()]  # said once


def test_a_configured_key_is_used_and_no_file_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XSERVE_AUDIT_DIGEST_KEY", "from-the-environment")
    settings = Settings(
        models_dir=tmp_path / "models", audit_url=f"sqlite:///{tmp_path / 'audit.db'}"
    )
    assert settings.audit_digest_key == "from-the-environment"
    audit = audit_log_from_settings(settings)
    assert audit is not None and audit.digest_key == b"from-the-environment"
    assert not (tmp_path / "audit.db.digest-key").exists()
    assert not list(tmp_path.glob("*digest*"))


def test_postgres_key_file_is_under_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    key = digest_key_for("postgresql://user@host/db", None)
    path = tmp_path / "audit" / "digest.key"
    assert path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert digest_key_for("postgresql://user@host/db", None) == key


def test_workers_use_the_servers_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XSERVE_AUDIT_DIGEST_KEY", raising=False)
    settings = _settings(tmp_path)
    server = audit_log_from_settings(settings)
    assert server is not None
    worker = worker_audit_log(WorkerContext.from_settings(settings))
    try:
        assert worker is not None and worker.digest_key == server.digest_key
    finally:
        if worker is not None:
            worker.close()


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with ThreadPoolExecutor(16) as pool:
        keys = set(pool.map(lambda _: digest_key_for(url, None), range(64)))
    assert len(keys) == 1
    assert (tmp_path / "audit.db.digest-key").read_text().strip() in keys


def _first_start(url: str) -> str:
    return digest_key_for(url, None)


def test_concurrent_processes_agree_on_one_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'procs' / 'audit.db'}"
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(4) as pool:
        keys = set(pool.map(_first_start, [url] * 8))
    assert len(keys) == 1
    assert os.listdir(tmp_path / "procs") == ["audit.db.digest-key"]
