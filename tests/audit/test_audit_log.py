"""The AuditLog: group commit, refusal on store failure, record bodies and redaction."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.audit_support import body, open_sink
from tests.server import DEMO_MODELS
from xserve.audit import AuditLog, Query, verify_sink
from xserve.audit.entry import decision_body, personal_digest
from xserve.audit.record import canonical, chain_hash, plain, seal, timestamp
from xserve.audit.sqlite import SQLiteSink
from xserve.errors import AuditUnavailable
from xserve.repository.version import ModelVersion, load_version
from xserve.serving.decision import Decision, new_request_id
from xserve.serving.outcome import Answer, Explanation, ReasonCode


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


def test_request_ids_are_uuid7_in_time_order() -> None:
    earlier = new_request_id()
    time.sleep(0.002)  # the next millisecond at least
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in [earlier, *ids]:
        assert re.fullmatch(r"[0-9a-f]{32}", text), text
        parsed = uuid.UUID(text)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert all(earlier < later for later in ids)  # the audit index grows at its end
    assert abs(int(earlier[:12], 16) / 1000 - time.time()) < 5  # milliseconds since 1970


def test_timestamps_are_fixed_width_utc() -> None:
    now = datetime.now(UTC)
    text = timestamp()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text), text
    assert abs(datetime.fromisoformat(text) - now).total_seconds() < 5
    assert timestamp(datetime(2024, 5, 1, 12, 0, 0, 7, tzinfo=UTC)) == "2024-05-01T12:00:00.000007Z"


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
KEY = b"test-digest-key"


def _decisions(
    model: ModelVersion, tag: str, n: int = 1, row: Sequence[float] = ROW
) -> list[Decision]:
    return [
        Decision(
            kind="predict",
            model=model,
            request_id=f"{tag}-{i}",
            caller=None,
            inputs=np.array([row]),
            answer=Answer(model.name, model.version, f"{tag}-{i}", predictions=[0]),
        )
        for i in range(n)
    ]


class _HeldSink(SQLiteSink):
    """Writes wait for ``release`` once ``hold`` is set (a slow disk on demand), and fail
    while ``broken`` is set (a full one)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.hold = threading.Event()
        self.release = threading.Event()
        self.started = threading.Event()
        self.broken = False
        self.groups: list[int] = []
        self.syncs: list[tuple[int, int]] = []
        """(writes returned when a sync began, when it ended)."""
        self.written = 0
        self.written_at: dict[str, int] = {}

    def write(self, bodies: Any) -> Any:
        self.groups.append(len(bodies))
        held = self.hold.is_set()
        self.started.set()
        if held:
            self.release.wait(10)
        if self.broken:
            raise OSError("disk on fire")
        records = super().write(bodies)
        self.written += 1
        for r in records:
            self.written_at[r.request_id] = self.written
        return records

    def sync(self) -> None:
        began = self.written
        super().sync()
        self.syncs.append((began, self.written))


def _held(tmp_path: Path) -> tuple[_HeldSink, AuditLog]:
    sink = _HeldSink(tmp_path / "audit.db")
    audit = AuditLog(sink, KEY.decode())
    audit.open()
    return sink, audit


def test_a_lone_decision_is_committed_at_once(tmp_path: Path, personal_model: ModelVersion) -> None:
    sink, audit = _held(tmp_path)
    assert audit.commit(_decisions(personal_model, "lone")) == [None]
    assert audit.commits == 1 and sink.groups == [1]
    assert [r.seq for r in sink.query(Query())] == [1]
    audit.close()


def test_threads_committing_meanwhile_share_the_next_commit(
    tmp_path: Path, personal_model: ModelVersion
) -> None:
    """Worker threads commit their micro-batches themselves; those that arrive while a
    commit runs wait, and one of them commits for all (one fsync), each answered."""
    sink, audit = _held(tmp_path)
    errors: dict[str, list[Exception | None]] = {}

    def commit(tag: str, batch: list[Decision]) -> None:
        errors[tag] = list(audit.commit(batch))

    sink.hold.set()
    first = threading.Thread(target=commit, args=("first", _decisions(personal_model, "first", 2)))
    first.start()
    assert sink.started.wait(10)
    sink.hold.clear()
    later = [
        threading.Thread(target=commit, args=(f"t{k}", _decisions(personal_model, f"t{k}", 3)))
        for k in range(4)
    ]
    bad = _decisions(personal_model, "bad", 1, ROW[:3])  # fewer inputs than features
    later.append(threading.Thread(target=commit, args=("bad", bad)))
    for t in later:
        t.start()
    time.sleep(0.3)  # they all reach the wait behind the held commit
    sink.release.set()
    for t in [first, *later]:
        t.join(10)
    assert sink.groups == [2, 12]  # the refused decision never reaches the store
    assert audit.commits == 2 and audit.records == 14
    assert errors["first"] == [None, None]
    assert all(errors[f"t{k}"] == [None] * 3 for k in range(4))
    assert len(errors["bad"]) == 1 and isinstance(errors["bad"][0], ValueError)
    stored = [r.request_id for r in sink.query(Query())]
    assert stored[:2] == ["first-0", "first-1"]
    assert sorted(stored[2:]) == sorted(f"t{k}-{i}" for k in range(4) for i in range(3))
    assert verify_sink(sink).ok
    audit.close()


def test_many_concurrent_decisions_share_few_commits(
    tmp_path: Path, personal_model: ModelVersion
) -> None:
    sink, audit = _held(tmp_path)
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda i: audit.commit(_decisions(personal_model, f"c{i}")), range(200))
        )
    assert all(r == [None] for r in results)
    assert audit.records == 200 and audit.commits < 200
    verdict = verify_sink(sink)
    assert verdict.ok and verdict.records == 200
    audit.close()


def test_every_decision_is_answered_only_after_a_sync_that_began_after_its_write(
    tmp_path: Path, personal_model: ModelVersion
) -> None:
    sink, audit = _held(tmp_path)
    late: list[str] = []

    def commit(tag: str) -> None:
        batch = _decisions(personal_model, tag, 2)
        assert audit.commit(batch) == [None, None]
        # A sync that has ended and began once this decision's write had returned.
        for d in batch:
            if not any(began >= sink.written_at[d.request_id] for began, _ in sink.syncs):
                late.append(d.request_id)

    threads = [threading.Thread(target=commit, args=(f"t{k}",)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert late == [] and len(sink.written_at) == 24
    assert verify_sink(sink).ok
    audit.close()


def test_store_failure_refuses_every_waiting_decision_then_recovers(
    tmp_path: Path, personal_model: ModelVersion
) -> None:
    sink, audit = _held(tmp_path)
    sink.broken = True
    refused = audit.commit(_decisions(personal_model, "down", 5))
    assert all(isinstance(e, AuditUnavailable) for e in refused), refused
    assert AuditUnavailable.status == 503 and AuditUnavailable.code == "audit_unavailable"
    assert sink.query(Query()) == []
    sink.broken = False
    assert audit.commit(_decisions(personal_model, "up", 5)) == [None] * 5
    assert [r.seq for r in sink.query(Query())] == [1, 2, 3, 4, 5]
    audit.close()


def test_a_failed_fsync_refuses_its_decisions_and_every_later_one(
    tmp_path: Path, personal_model: ModelVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = AuditLog(_sink(tmp_path), KEY.decode())
    assert audit.commit(_decisions(personal_model, "ok", 3)) == [None] * 3

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)  # the disk fails under the store
    refused = audit.commit(_decisions(personal_model, "lost", 3))
    assert all(isinstance(e, AuditUnavailable) and "fsync" in e.message for e in refused)
    monkeypatch.undo()  # the disk answers again: the pages it dropped are gone all the same
    later = audit.commit(_decisions(personal_model, "later"))
    assert isinstance(later[0], AuditUnavailable)
    audit.close()


def test_a_closed_log_refuses_decisions(tmp_path: Path, personal_model: ModelVersion) -> None:
    audit = AuditLog(_sink(tmp_path), KEY.decode())
    assert audit.commit(_decisions(personal_model, "before")) == [None]
    audit.close()
    (refused,) = audit.commit(_decisions(personal_model, "after"))
    assert isinstance(refused, AuditUnavailable)
    reopened = _sink(tmp_path)
    assert [r.request_id for r in reopened.query(Query())] == ["before-0"]
    reopened.close()


def test_two_writers_of_one_store_extend_one_chain(tmp_path: Path) -> None:
    """Two sinks on one SQLite file (two server processes) take turns: each notices the
    other's records and chains after them."""
    mine, other = _sink(tmp_path), _sink(tmp_path)
    mine.append([body(1)])
    mine.append([body(2), body(3), body(4)])
    other.append([body(5)])
    last = mine.append([body(6)])
    assert last[0].seq == 6
    assert [r.request_id for r in mine.query(Query())] == [f"req-{i}" for i in range(1, 7)]
    verdict = verify_sink(other)
    assert verdict.ok and verdict.head.seq == 6 and verdict.head.hash == last[0].hash
    mine.close()
    other.close()


def test_unwritable_store_fails_to_open(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(AuditUnavailable):
        SQLiteSink(tmp_path / "file" / "audit.db").open()


def test_personal_features_are_replaced_by_digests(personal_model: ModelVersion) -> None:
    key = "s3cret"
    reasons = [ReasonCode("age", "Age", 0.1)]
    explanation = Explanation("tree_shap", 1, values={"age": 0.1}, reason_codes=reasons)
    answer = Answer(
        "credit-risk",
        "1",
        "r1",
        "client-7",
        predictions=[0],
        probabilities=[[0.8, 0.2]],
        explanations=[explanation],
    )
    decision = Decision(
        kind="predict",
        model=personal_model,
        request_id="r1",
        caller="alice",
        inputs=np.array([ROW]),
        answer=answer,
    )
    b = decision_body(decision, digest_key=key.encode())
    row = b["input"][0]
    expected = "hmac-sha256:" + hmac.new(b"s3cret", b"35", hashlib.sha256).hexdigest()
    assert row["age"] == {"digest": expected}
    assert row["annual_income"] == {"digest": personal_digest(52000, key.encode())}
    assert row["debt_to_income"] == 0.31 and row["num_open_accounts"] == 4
    assert not any(v in (35, 52000) for v in row.values() if not isinstance(v, dict))
    assert b["artifact_sha256"] == personal_model.digest and b["caller"] == "alice"
    assert b["output"] == {"predictions": [0], "probabilities": [[0.8, 0.2]]}
    assert b["reason_codes"] == [[{"feature": "age", "reason": "Age", "contribution": 0.1}]]
    assert b["explanations"] == [{"method": "tree_shap", "class": 1, "values": {"age": 0.1}}]
    assert b["client_id"] == "client-7"


def test_missing_values_are_recorded_as_null(personal_model: ModelVersion) -> None:
    row = list(ROW)
    row[2] = math.nan
    (decision,) = _decisions(personal_model, "r", 1, row)
    b = decision_body(decision, KEY)
    assert b["input"][0]["debt_to_income"] is None
    assert b["explanations"] is None and b["reason_codes"] is None
    assert "client_id" not in b  # no id sent: none recorded


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


# -- canonical text: msgspec's fast path must write exactly json.dumps's bytes -------------


def _reference(body: Any) -> str:
    """The canonical text as the module docstring defines it, by json.dumps alone."""
    return json.dumps(
        plain(body), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


_odd_floats = st.sampled_from(
    [
        1e16,
        9999999999999998.0,
        1e-4,
        9.999999999999999e-05,
        1e-05,
        1.5e-07,
        5e-324,
        -0.0,
        1.7976931348623157e308,
        0.1,
        12345678901234.56,
        float("inf"),
        float("-inf"),
    ]
)
_numpy = st.sampled_from(
    [
        np.float64(1e-5),
        np.float32(0.1),
        np.int64(-3),
        np.bool_(True),
        np.float64("nan"),
        np.array([1.5, 2.0]),
    ]
)
_ascii = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8)
# Plain JSON, as bodies nearly always are: msgspec's text is taken, and must be json's.
_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | _ascii
    | _odd_floats
    | _odd_floats
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_ascii, inner, max_size=4),
    max_leaves=12,
)
# Anything else json.dumps takes: non-ASCII and escaped text, NaN, big integers, tuples, NumPy.
_awkward = (
    st.integers(min_value=2**62, max_value=2**80)
    | st.floats()
    | st.text()
    | st.text(alphabet='\x00\x1f\x7f"\\/é\u2028\U0001f600ab', min_size=1)
    | _numpy
    | st.tuples(_plain, _plain)
    | st.dictionaries(st.integers(), _plain, max_size=3)
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(_ascii, _plain, max_size=5), _ascii, st.none() | _awkward)
def test_canonical_text_is_json_dumps_byte_for_byte(
    body: dict[str, Any], key: str, awkward: Any
) -> None:
    if awkward is not None:  # one odd value among plain ones: it alone decides
        body[key] = awkward
    assert canonical(body) == _reference(body)


def test_canonical_text_of_awkward_values() -> None:
    awkward = [
        1e16,
        1e-05,
        1.5e-07,
        float("inf"),
        float("nan"),
        "é",
        "\x7f",
        'a"b',
        2**70,
        np.float32(0.1),
        (1, 2),
        True,
        {10: "int keys", 9: "sort as numbers"},
    ]
    for value in awkward:
        body = {"b": value, "a": [value], "seq": 3}
        assert canonical(body) == _reference(body), value
    assert canonical({"x": 1e16, "y": 1e-05}) == '{"x":1e+16,"y":1e-05}'
    assert canonical({"x": float("-inf")}) == '{"x":"-Infinity"}'
    for unencodable in ({1, 2}, datetime(2024, 5, 1, tzinfo=UTC), b"raw", {1: "a", "b": 2}):
        with pytest.raises(TypeError):
            canonical({"x": unencodable})


def test_personal_digest_requires_a_key() -> None:
    with pytest.raises(ValueError, match="key"):
        personal_digest(35, b"")
    with pytest.raises(ValueError, match="digest key"):
        AuditLog(_sink_placeholder(), "")


def _sink_placeholder() -> SQLiteSink:
    return SQLiteSink(Path("unused.db"))  # never opened
