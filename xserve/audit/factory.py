"""Choosing the audit sink from ``XSERVE_AUDIT_URL``."""

from __future__ import annotations

import logging
from pathlib import Path

from xserve.audit.base import AuditSink
from xserve.audit.log import AuditLog
from xserve.settings import Settings

__all__ = ["DISABLED", "audit_log_from_settings", "sink_from_url"]

log = logging.getLogger(__name__)

DISABLED = "none"
"""``XSERVE_AUDIT_URL=none``: no audit log (not for regulated use)."""


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


def audit_log_from_settings(settings: Settings) -> AuditLog | None:
    """The server's audit log, or None (with a warning) when auditing is turned off."""
    sink = sink_from_url(settings.audit_url)
    if sink is None:
        log.warning(
            "AUDIT LOG DISABLED (XSERVE_AUDIT_URL=none): decisions are answered without a "
            "record. Not for regulated use."
        )
        return None
    return AuditLog(sink, settings.audit_digest_key)
