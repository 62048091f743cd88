"""REST v1 audit endpoints: querying records and verifying the chain (``audit`` role)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
from litestar import Controller, get
from litestar.params import Parameter

from xserve.api.auth import requires
from xserve.api.openapi import AUTH, BEARER, answers
from xserve.api.schemas import AuditPage, Verdict
from xserve.audit import AuditLog, Query
from xserve.audit.base import MAX_PAGE
from xserve.audit.record import timestamp
from xserve.errors import AuditDisabled, InvalidInput

__all__ = ["AuditController"]

MAX_SEQ = 2**63 - 1
"""The largest sequence number a store holds (a signed 64-bit integer)."""


def _time(name: str, text: str | None) -> str | None:
    """An ISO 8601 time (naive means UTC) as the records write it, for comparison."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{name}: {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return timestamp(moment)


def _enabled(audit_log: AuditLog | None) -> AuditLog:
    if audit_log is None:
        raise AuditDisabled("the audit log is turned off on this server (XSERVE_AUDIT_URL=none)")
    return audit_log


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["audit"]
    opt = requires("audit")
    security = BEARER

    @get("/records", responses=answers(AuditPage, 400, *AUTH, 404, 422, 503))
    async def records(
        self,
        audit_log: AuditLog | None,
        since: str | None = Parameter(default=None, description="From this time (ISO 8601, UTC)"),
        until: str | None = Parameter(default=None, description="Before this time"),
        model: str | None = None,
        version: str | None = None,
        request_id: str | None = None,
        limit: int = Parameter(ge=1, le=MAX_PAGE, default=100),
        after: int = Parameter(
            ge=0, le=MAX_SEQ, default=0, description="Page on: the last seq seen"
        ),
    ) -> dict[str, Any]:
        """Records in sequence order; pass `next_after` as `after` for the next page."""
        log = _enabled(audit_log)
        query = Query(
            since=_time("since", since),
            until=_time("until", until),
            model=model,
            version=version,
            request_id=request_id,
            after=after,
            limit=limit,
        )
        found = await anyio.to_thread.run_sync(log.query, query)
        return {
            "records": [r.to_dict() for r in found],
            "next_after": found[-1].seq if len(found) == limit else None,
        }

    @get("/verify", responses=answers(Verdict, *AUTH, 404, 503))
    async def verify(self, audit_log: AuditLog | None) -> dict[str, Any]:
        """Check the whole hash chain; `first_bad` names the first bad record, if any."""
        verdict = await anyio.to_thread.run_sync(_enabled(audit_log).verify)
        return verdict.to_dict()
