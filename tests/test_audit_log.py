"""The AuditLog: group commit, refusal on store failure, record bodies and redaction."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.audit_support import body, open_sink
from tests.server import DEMO_MODELS
from xserve.audit import AuditLog, Query, verify_sink
from xserve.audit.entry import decision_body, personal_digest
from xserve.audit.record import canonical, chain_hash, seal, timestamp
from xserve.audit.sqlite import SQLiteSink
from xserve.decision import Decision
from xserve.errors import AuditUnavailable
from xserve.repository.version import ModelVersion, load_version


def _sink(tmp_path: Path) -> SQLiteSink:
    sink = open_sink(f"sqlite:///{tmp_path / 'audit.db'}")
    assert isinstance(sink, SQLiteSink)
    return sink


def test_canonical_text_is_sorted_compact_and_stable() -> None:
    text = canonical({"b": [1.5, float("nan"), np.float32(0.25)], "a": {"z": 1, "y": "é"}})
    assert text == '{"a":{"y":"\\u00e9","z":1},"b":[1.5,null,0.25]}'
    assert canonical(json.loads(text)) == text  # what is exported re-hashes the same
    r = seal({"time": "t", "request_id": "r", "model": "m", "version": "1"}, 5, "ab" * 32)
    assert r.hash == hashlib.sha256(("ab" * 32 + r.body).encode()).hexdigest()
    assert json.loads(r.body)["seq"] == 5
    assert r.hash == chain_hash(r.prev_hash, r.body)


def test_timestamps_are_fixed_width_utc() -> None:
    now = datetime.now(UTC)
    text = timestamp()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text), text
    assert abs(datetime.fromisoformat(text) - now).total_seconds() < 5
    assert timestamp(datetime(2024, 5, 1, 12, 0, 0, 7, tzinfo=UTC)) == "2024-05-01T12:00:00.000007Z"


def test_concurrent_records_share_commits(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    audit = AuditLog(sink)

    async def go() -> list[int]:
        lone = await audit.append(body(0))  # alone: committed at once, not held back
        assert audit.commits == 1 and lone.seq == 1
        records = await asyncio.gather(*(audit.append(body(i)) for i in range(1, 101)))
        return [r.seq for r in records]

    seqs = asyncio.run(go())
    assert sorted(seqs) == list(range(2, 102))
    # 100 records arriving together: far fewer transactions than records.
    assert 2 <= audit.commits <= 4, audit.commits
    assert len(sink.query(Query(limit=1000))) == 101
    assert verify_sink(sink).ok
    sink.close()


def test_store_failure_refuses_every_waiting_decision_then_recovers(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    audit = AuditLog(sink)
    real_append = sink.append
    broken = True

    def flaky(bodies: Any) -> Any:
        if broken:
            raise OSError("disk on fire")
        return real_append(bodies)

    sink.append = flaky  # type: ignore[method-assign]

    async def go() -> list[Any]:
        return await asyncio.gather(*(audit.append(body(i)) for i in range(5)),
                                    return_exceptions=True)  # fmt: skip

    results = asyncio.run(go())
    assert all(isinstance(r, AuditUnavailable) for r in results), results
    assert AuditUnavailable.status == 503 and AuditUnavailable.code == "audit_unavailable"
    assert sink.query(Query()) == []
    broken = False
    assert [r.seq for r in asyncio.run(go())] == [1, 2, 3, 4, 5]
    sink.close()


def test_unwritable_store_fails_to_open(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(AuditUnavailable):
        SQLiteSink(tmp_path / "file" / "audit.db").open()


@pytest.fixture(scope="module")
def personal_model(tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    """credit-risk with age and annual_income marked personal."""
    folder = tmp_path_factory.mktemp("cr") / "1"
    shutil.copytree(DEMO_MODELS / "credit-risk" / "1", folder)
    manifest = yaml.safe_load((folder / "xserve.yaml").read_text())
    for f in manifest["features"]:
        f["personal"] = f["name"] in ("age", "annual_income")
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest))
    return load_version("credit-risk", "1", folder)


ROW = [35.0, 52000.0, 0.31, 0.45, 4.0, 0.0, 30.0, 12000.0]


@pytest.mark.parametrize("key", [None, "s3cret"])
def test_personal_features_are_replaced_by_digests(personal_model: ModelVersion,
                                                   key: str | None) -> None:  # fmt: skip
    reasons = [{"feature": "age", "reason": "Age"}]
    answer = {"predictions": [0], "probabilities": [[0.8, 0.2]], "id": "client-7",
              "explanations": [{"method": "tree_shap", "values": {"age": 0.1},
                                "reason_codes": reasons}]}  # fmt: skip
    decision = Decision(kind="predict", model=personal_model, request_id="r1", caller="alice",
                        inputs=np.array([ROW]), answer=answer)  # fmt: skip
    b = decision_body(decision, digest_key=key.encode() if key else None)
    row = b["input"][0]
    if key:
        expected = "hmac-sha256:" + hmac.new(b"s3cret", b"35", hashlib.sha256).hexdigest()
    else:
        expected = "sha256:" + hashlib.sha256(b"35").hexdigest()
    assert row["age"] == {"digest": expected}
    assert row["annual_income"] == {"digest": personal_digest(52000, key.encode() if key else None)}
    assert row["debt_to_income"] == 0.31 and row["num_open_accounts"] == 4
    assert not any(v in (35, 52000) for v in row.values() if not isinstance(v, dict))
    assert b["artifact_sha256"] == personal_model.digest and b["caller"] == "alice"
    assert b["output"] == {"predictions": [0], "probabilities": [[0.8, 0.2]]}
    assert b["reason_codes"] == [[{"feature": "age", "reason": "Age"}]]
    assert b["explanations"] == [{"method": "tree_shap", "values": {"age": 0.1}}]
    assert b["client_id"] == "client-7"


def test_missing_values_are_recorded_as_null(personal_model: ModelVersion) -> None:
    row = list(ROW)
    row[2] = math.nan
    b = decision_body(Decision(kind="predict", model=personal_model, request_id="r", caller=None,
                               inputs=np.array([row]), answer={"predictions": [0]}))  # fmt: skip
    assert b["input"][0]["debt_to_income"] is None
    assert b["explanations"] is None and b["reason_codes"] is None


def test_audit_url_chooses_the_sink() -> None:
    from xserve.audit import sink_from_url
    from xserve.audit.postgres import PostgresSink

    assert sink_from_url("none") is None and sink_from_url(" NONE ") is None
    relative = sink_from_url("sqlite:///./audit/audit.db")
    absolute = sink_from_url("sqlite:////var/lib/xserve/audit.db")
    assert isinstance(relative, SQLiteSink) and relative.path == Path("audit/audit.db")
    assert isinstance(absolute, SQLiteSink) and absolute.path == Path("/var/lib/xserve/audit.db")
    assert isinstance(sink_from_url("postgresql://u@h/db"), PostgresSink)
    with pytest.raises(ValueError, match="XSERVE_AUDIT_URL"):
        sink_from_url("mysql://u@h/db")


def test_a_caller_going_away_does_not_stop_the_commit(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    audit = AuditLog(sink)

    async def go() -> None:
        gone = asyncio.create_task(audit.append(body(1)))
        stays = asyncio.create_task(audit.append(body(2)))
        await asyncio.sleep(0)  # both queued, the commit under way
        gone.cancel()
        assert (await stays).seq == 2
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(go())
    assert [r.request_id for r in sink.query(Query())] == ["req-1", "req-2"]
    sink.close()
