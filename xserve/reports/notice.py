"""The notice of one decision, from its audit record: the outcome, the model version, when,
the principal reasons in plain language and the record's hash, as an adverse-action notice
or an explanation under Art. 86 of the EU AI Act needs them.

The reasons are the reason codes recorded with the decision. A decision answered without an
explanation has none recorded: its reasons are then computed from the recorded input by the
version's exact explainer, only when the artifact on disk is the one the record names, and
the notice says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from xserve.audit import AuditSink, Query, Record
from xserve.audit.reading import read_body
from xserve.audit.record import chain_hash, timestamp
from xserve.errors import XServeError
from xserve.explainers.attach import attach_inline
from xserve.explainers.reasons import adverse_index, render
from xserve.monitoring.drift import NOT_TRAFFIC
from xserve.reports.document import Bullets, Document, Facts, Paragraph, Section, Table
from xserve.reports.traffic import encode_row, records
from xserve.repository.repository import ModelRepository
from xserve.repository.version import ModelVersion
from xserve.serving.prediction import score

__all__ = ["DecisionNotFound", "Notice", "find_decision", "notice_document"]


class DecisionNotFound(XServeError):
    status = 404
    code = "decision_not_found"


@dataclass(frozen=True)
class Notice:
    record: Record
    body: dict[str, Any]
    model: ModelVersion | None
    """The version that decided, when its folder still loads with the recorded artifact."""


def find_decision(sink: AuditSink, request_id: str) -> Record:
    """The record that answered ``request_id``: its predict/infer record before any shadow
    copy or later explanation of the same request."""
    found = list(records(sink, Query(request_id=request_id)))
    if not found:
        raise DecisionNotFound(f"no decision with request id {request_id!r} in the audit log")

    def rank(r: Record) -> int:
        kind = (read_body(r.body) or {}).get("kind")
        return 0 if kind in ("predict", "infer") else 2 if kind in NOT_TRAFFIC else 1

    return min(found, key=lambda r: (rank(r), r.seq))


def deciding_model(models_dir: Path, body: dict[str, Any]) -> ModelVersion | None:
    repository = ModelRepository(models_dir, on_load=[attach_inline])
    repository.scan(only=str(body.get("model")))
    try:
        model = repository.get(str(body.get("model")), str(body.get("version")))
    except XServeError:
        return None
    return model if model.digest == body.get("artifact_sha256") else None


def _reasons(notice: Notice, i: int) -> tuple[list[dict[str, Any]] | None, str]:
    recorded = notice.body.get("reason_codes") or []
    if i < len(recorded) and isinstance(recorded[i], list):
        return recorded[i], "recorded with the decision"
    model = notice.model
    row = (notice.body.get("input") or [])[i]
    if model is None or model.inline is None:
        return None, "none recorded, and the deciding version is not available to compute them"
    x, redacted = encode_row(model.features, row)
    if redacted:
        return None, "none recorded, and personal inputs are kept only as digests"
    prediction = score(model, np.asarray([x], dtype=np.float64), explain=True)
    assert prediction.attribution is not None
    explanation = render(model, prediction.attribution, 0, adverse_index(model))
    codes = msgspec.to_builtins(explanation.reason_codes or [])
    return codes, (
        f"computed for this notice by {model.inline.method} from the recorded input, "
        f"with the recorded artifact (sha256 {model.digest})"
    )


def _outcome(notice: Notice, i: int) -> str:
    output = notice.body.get("output") or {}
    predictions = output.get("predictions") or []
    if i >= len(predictions):
        return "not recorded (an explanation record)"
    label = predictions[i]
    model = notice.model
    probabilities = output.get("probabilities")
    if probabilities is None:
        return f"predicted value {label}"
    text = f"class {label}"
    if model is not None and model.classes:
        adverse = model.classes[adverse_index(model)]
        p = probabilities[i][adverse_index(model)]
        verdict = "adverse" if str(label) == str(adverse) else "not adverse"
        text += f" ({verdict}; probability of the adverse class {adverse}: {p:.3f})"
    return text


def _instance(notice: Notice, i: int, count: int) -> Section:
    b, r = notice.body, notice.record
    title = "The decision" if count == 1 else f"Decision {i + 1} of {count} in this request"
    s = Section(f"decision-{i}", title, new_page=i > 0)
    s.add(
        Facts(
            f"decision-facts-{i}",
            [
                ("Outcome", _outcome(notice, i)),
                ("Model", f"{b.get('model')} version {b.get('version')}"),
                ("Artifact SHA-256", str(b.get("artifact_sha256"))),
                ("Time (UTC)", str(b.get("time"))),
                ("Request id", str(b.get("request_id"))),
                ("Audit record", f"sequence number {r.seq}"),
            ],
        )
    )
    codes, source = _reasons(notice, i)
    s.add(Paragraph("Principal reasons", "heading"))
    if codes:
        s.add(Bullets(f"reasons-{i}", [str(c.get("reason")) for c in codes]))
        s.add(
            Paragraph(
                f"Reasons {source}: the factors that most pushed this decision toward "
                "the adverse outcome, most important first.",
                "note",
            )
        )
        row = (b.get("input") or [{}])[i]
        details = [
            [
                str(c.get("reason")),
                str(c.get("feature")),
                _value(row.get(c.get("feature"))),
                f"{float(c.get('contribution', 0.0)):.4f}",
            ]
            for c in codes
        ]
        s.add(Table(f"reason-details-{i}", ["Reason", "Feature", "Value", "Contribution"], details))
    else:
        s.add(
            Paragraph(
                f"No reasons: {source}."
                if codes is None
                else "No factor pushed this decision toward the adverse outcome.",
                "note",
            )
        )
    return s


def _value(v: Any) -> str:
    if isinstance(v, dict):
        return "personal: recorded as a digest"
    return "missing" if v is None else str(v)


def notice_document(notice: Notice, instance: int | None = None) -> Document:
    b, r = notice.body, notice.record
    rows = b.get("input") or []
    picked = range(len(rows)) if instance is None else [instance]
    intact = chain_hash(r.prev_hash, r.body) == r.hash
    doc = Document(
        title="Notice of an automated decision",
        subtitle=f"{b.get('model')} version {b.get('version')} · request {b.get('request_id')}",
        generated=timestamp(),
        footer=f"audit record {r.seq} · hash {r.hash[:16]}…",
    )
    doc.sections = [_instance(notice, i, len(rows)) for i in picked]
    # Each page stands alone: the person a decision concerns may be given only theirs.
    for section in doc.sections:
        section.blocks.insert(
            0,
            Paragraph(
                "This notice explains a decision made with an automated model: what was decided, "
                "by which model version and when, and the principal reasons for it. It is drawn "
                "from the decision's record in the tamper-evident audit log, identified by the "
                "hash below."
            ),
        )
        section.add(
            Paragraph("Record hash (SHA-256)", "heading"),
            Paragraph(r.hash, "mono"),
            Paragraph(
                (
                    "The record's content matches this hash."
                    if intact
                    else "WARNING: the record's content does not match its hash: it was altered."
                )
                + " The whole log is checked with `xserve audit verify`.",
                "good" if intact else "alert",
            ),
        )
    return doc
