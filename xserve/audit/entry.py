"""The body of a decision's audit record, with personal inputs replaced by digests.

Inputs are recorded by feature name, as the model received them (integers as
integers, booleans as booleans, categories by name, a missing value as null).
A feature marked ``personal: true`` in the manifest is recorded as
``{"digest": "hmac-sha256:<hex>"}``, HMAC-SHA256 over the JSON text of its
value, always keyed: under ``XSERVE_AUDIT_DIGEST_KEY``, or the key file
generated beside the store (``xserve.audit.factory.digest_key_for``). An
unkeyed digest of a value with few possible values (an age, a postcode) would
be reversed by trying them all; the keyed one is not, without the key, yet
whoever holds the key can still check a claimed value against the record.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from typing import Any

import msgspec

from xserve.audit.record import plain, timestamp
from xserve.outcomes.record import Observed
from xserve.repository.manifest import Feature
from xserve.repository.version import ModelVersion
from xserve.runtimes.base import Matrix
from xserve.serving.decision import Decision
from xserve.serving.outcome import UNSET

__all__ = ["decision_body", "entry_body", "outcome_body", "personal_digest"]


def personal_digest(value: Any, key: bytes) -> str:
    if not key:
        raise ValueError("personal features are digested only under a key")
    text = json.dumps(plain(value), sort_keys=True, separators=(",", ":")).encode()
    return "hmac-sha256:" + hmac.new(key, text, hashlib.sha256).hexdigest()


def _value(feature: Feature, value: float) -> Any:
    if math.isnan(value):
        return None
    if feature.type == "categorical" and feature.categories and value.is_integer():
        index = int(value)
        if 0 <= index < len(feature.categories):
            return feature.categories[index]
    if feature.type == "boolean":
        return bool(value)
    if feature.type == "integer" and value.is_integer():
        return int(value)
    return value


def _inputs(model: ModelVersion, x: Matrix, key: bytes) -> list[dict[str, Any]]:
    rows = []
    for raw in x.tolist():
        row: dict[str, Any] = {}
        for feature, v in zip(model.features, raw, strict=True):
            value = _value(feature, v)
            if feature.personal:
                value = {"digest": personal_digest(value, key)}
            row[feature.name] = value
        rows.append(row)
    return rows


def _mentions(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.]){re.escape(name)}(?![\w.])")


def _rule_texts_digested(
    model: ModelVersion, explanations: list[dict[str, Any]], key: bytes
) -> list[dict[str, Any]]:
    """LIME conditions and Anchors clauses that name a personal feature, as keyed digests:
    ``34.75 < age <= 48.00`` bounds the age as surely as the value would."""
    personal = [_mentions(f.name) for f in model.features if f.personal]
    if not personal:
        return explanations

    def text(rule: str) -> str:
        if any(p.search(rule) for p in personal):
            return personal_digest(rule, key)
        return rule

    for e in explanations:
        if isinstance(e.get("conditions"), dict):
            e["conditions"] = {name: text(rule) for name, rule in e["conditions"].items()}
        if isinstance(e.get("anchor"), list):
            e["anchor"] = [text(rule) for rule in e["anchor"]]
    return explanations


def decision_body(decision: Decision, digest_key: bytes) -> dict[str, Any]:
    """Everything about one decision but its sequence number and hashes."""
    model, answer = decision.model, decision.answer
    explanations: list[Any] | None = None
    reasons: list[Any] | None = None
    if answer.explanations is not UNSET:
        # Reason codes stand on their own (adverse-action notices read them alone).
        reasons = [
            None if e.reason_codes is UNSET else msgspec.to_builtins(e.reason_codes)
            for e in answer.explanations
        ]
        explanations = _rule_texts_digested(
            model,
            msgspec.to_builtins([e.without_reasons() for e in answer.explanations]),
            digest_key,
        )
    output: dict[str, Any] = {}
    if answer.predictions is not UNSET:
        output["predictions"] = answer.predictions
    if answer.probabilities is not UNSET:
        output["probabilities"] = answer.probabilities
    body: dict[str, Any] = {
        "kind": decision.kind,
        "time": timestamp(),
        "request_id": decision.request_id,
        "caller": decision.caller,
        "model": model.name,
        "version": model.version,
        "artifact_sha256": model.digest,
        "input": _inputs(model, decision.inputs, digest_key),
        "output": output,
        "explanations": explanations,
        "reason_codes": reasons,
    }
    if answer.id is not UNSET:
        body["client_id"] = answer.id
    return body


def outcome_body(outcome: Observed, digest_key: bytes) -> dict[str, Any]:
    """An outcome's record: segment values only as keyed digests (they are personal)."""
    segments = outcome.segments
    digests = {k: personal_digest(v, digest_key) for k, v in segments.items()} if segments else None
    return outcome.body(timestamp(), digests)


def entry_body(entry: Decision | Observed, digest_key: bytes) -> dict[str, Any]:
    """The record body of whatever the audit log commits."""
    if isinstance(entry, Observed):
        return outcome_body(entry, digest_key)
    return decision_body(entry, digest_key)
