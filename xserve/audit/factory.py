"""Choosing the audit sink from ``XSERVE_AUDIT_URL``."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from xserve.audit.base import AuditSink
from xserve.audit.checkpoint import Every, Signer
from xserve.audit.checkpointer import Checkpointer
from xserve.audit.log import AuditLog
from xserve.security.files import private_folder
from xserve.security.signing import load_private_key
from xserve.settings import Settings

__all__ = [
    "DISABLED",
    "POSTGRES_KEY_FILE",
    "audit_log_from_settings",
    "checkpointer_from_settings",
    "digest_key_for",
    "digest_key_path",
    "sink_from_url",
]

log = logging.getLogger(__name__)

DISABLED = "none"
"""``XSERVE_AUDIT_URL=none``: no audit log (not for regulated use)."""

POSTGRES_KEY_FILE = Path("audit") / "digest.key"
"""The generated digest key for a PostgreSQL store, relative to the working folder."""

KEY_SUFFIX = ".digest-key"
"""The generated digest key for an SQLite store: beside the database file."""


def sink_from_url(url: str) -> AuditSink | None:
    """``sqlite:///relative/path``, ``sqlite:////absolute/path``, ``postgresql://...`` or
    ``none``; raises ValueError for anything else."""
    if url.strip().lower() == DISABLED:
        return None
    if url.startswith("sqlite:///"):
        from xserve.audit.sqlite import SQLiteSink

        return SQLiteSink(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        from xserve.audit.postgres import PostgresSink

        return PostgresSink(url)
    raise ValueError(
        f"XSERVE_AUDIT_URL: {url!r}: expected sqlite:///path, postgresql://... or none"
    )


def digest_key_path(url: str) -> Path:
    """Where the generated digest key of the store at ``url`` is kept: beside an SQLite
    database (``audit.db`` -> ``audit.db.digest-key``), else ``./audit/digest.key``."""
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        return db.with_name(db.name + KEY_SUFFIX)
    return POSTGRES_KEY_FILE


def _read_key(path: Path) -> str:
    key = path.read_text(encoding="ascii").strip()
    if len(key) < 32:
        raise ValueError(f"{path}: the audit digest key file is empty or too short")
    return key


def digest_key_for(url: str, configured: str | None) -> str:
    """The secret of the keyed digests of personal features: ``XSERVE_AUDIT_DIGEST_KEY``
    when set, else the key file beside the store (``digest_key_path``), created on first
    use with 32 random bytes (hex, mode 0600). The file is linked into place only when
    absent, so processes starting together all end with the key of whichever came
    first. Several hosts (Celery workers on PostgreSQL) must set the variable."""
    if configured:
        return configured
    path = digest_key_path(url)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    private_folder(path.parent)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_bytes(32).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process got there first
        except FileExistsError:
            pass
        else:
            log.warning(
                "XSERVE_AUDIT_DIGEST_KEY is unset: created the audit digest key file %s; "
                "keep it secret and apart from the audit log (several hosts must set "
                "XSERVE_AUDIT_DIGEST_KEY instead)",
                path.resolve(),
            )
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key(path)


def audit_log_from_settings(settings: Settings) -> AuditLog | None:
    """The server's audit log, or None (with a warning) when auditing is turned off."""
    sink = sink_from_url(settings.audit_url)
    if sink is None:
        log.warning(
            "AUDIT LOG DISABLED (XSERVE_AUDIT_URL=none): decisions are answered without a "
            "record. Not for regulated use."
        )
        return None
    return AuditLog(
        sink,
        digest_key_for(settings.audit_url, settings.audit_digest_key),
        checkpointer_from_settings(sink, settings),
    )


def checkpointer_from_settings(sink: AuditSink, settings: Settings) -> Checkpointer | None:
    """What signs ``sink``'s head, if ``XSERVE_AUDIT_SIGNING_KEY`` is set; a key that
    cannot be read or a bad ``XSERVE_AUDIT_CHECKPOINT_EVERY`` raise ValueError."""
    if settings.audit_signing_key is None:
        if settings.audit_checkpoint_dir is not None:
            log.warning(
                "XSERVE_AUDIT_CHECKPOINT_DIR is set but XSERVE_AUDIT_SIGNING_KEY is not: "
                "no audit checkpoint is signed"
            )
        return None
    every = Every.parse(settings.audit_checkpoint_every)
    signer = Signer(load_private_key(settings.audit_signing_key))
    log.info(
        "audit checkpoints: the chain head is signed every %s with key %s%s",
        f"{every.records} records" if every.records else f"{every.seconds:g} s",
        signer.key_id,
        f", and appended to {settings.audit_checkpoint_dir}"
        if settings.audit_checkpoint_dir
        else "",
    )
    return Checkpointer(sink, signer, every, settings.audit_checkpoint_dir)
