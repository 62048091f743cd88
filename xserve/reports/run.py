"""Writing reports and notices to files: what ``xserve report`` runs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from xserve.audit.reading import read_body
from xserve.reports.content import report_document
from xserve.reports.data import gather, load_model, open_audit, parse_time
from xserve.reports.document import Document
from xserve.reports.notice import (
    DecisionNotFound,
    Notice,
    deciding_model,
    find_decision,
    notice_document,
)

__all__ = ["Format", "write_notice", "write_report"]

Format = Literal["html", "pdf"]


def _write(doc: Document, fmt: Format, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        from xserve.reports.html import render_html

        content = render_html(doc).encode("utf-8")
    else:
        from xserve.reports.pdf import render_pdf

        content = render_pdf(doc)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(content)
    tmp.replace(path)  # never a half-written report under the final name
    return path


def write_report(
    models_dir: Path,
    audit_url: str,
    model: str,
    version: str | None,
    since: str | None,
    until: str | None,
    fmt: Format,
    out_dir: Path,
    segment_labels: dict[str, str] | None = None,
) -> Path:
    """``<out_dir>/<model>-<version>-<since>_<until>.<fmt>``: named for its period, so one
    report never replaces another's (see :func:`period_label`)."""
    start, end = parse_time("--since", since), parse_time("--until", until, end=True)
    repository = load_model(models_dir, model, version)
    data = gather(repository, model, version, audit_url, start, end, segment_labels)
    period = f"{period_label(since, 'start')}_{period_label(until, data.generated)}"
    return _write(
        report_document(data), fmt, out_dir / f"{model}-{data.model.version}-{period}.{fmt}"
    )


def period_label(given: str | None, default: str) -> str:
    """A period bound for a file name: a bare date as given (``2025-03-31``), else the UTC
    time to the second (``2025-03-31T120000Z``); unset, ``default`` (``start`` for an open
    beginning, the generation time for an open end)."""
    text = given or default
    if len(text) == 10 or text == "start":
        return text
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H%M%SZ")


def write_notice(
    models_dir: Path,
    audit_url: str,
    request_id: str,
    fmt: Format,
    out_dir: Path,
    instance: int | None = None,
) -> Path:
    """``<out_dir>/decision-<request_id>.<fmt>``."""
    sink, note = open_audit(audit_url)
    if sink is None:
        raise DecisionNotFound(f"cannot look up decisions: {note}")
    with sink:
        record = find_decision(sink, request_id)
    body = read_body(record.body) or {}
    count = len(body.get("input") or [])
    if instance is not None and not 0 <= instance < count:
        raise DecisionNotFound(f"request {request_id!r} holds {count} decisions (0 to {count - 1})")
    notice = Notice(record, body, deciding_model(models_dir, body))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in request_id)
    return _write(notice_document(notice, instance), fmt, out_dir / f"decision-{safe}.{fmt}")
