"""The AuditLog: group commit, refusal on store failure, record bodies and redaction."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
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
    real_write = sink.write
    broken = True

    def flaky(bodies: Any) -> Any:
        if broken:
            raise OSError("disk on fire")
        return real_write(bodies)

    sink.write = flaky  # type: ignore[method-assign]

    async def go() -> list[Any]:
        return await asyncio.gather(
            *(audit.append(body(i)) for i in range(5)), return_exceptions=True
        )

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
def test_personal_features_are_replaced_by_digests(
    personal_model: ModelVersion, key: str | None
) -> None:
    reasons = [{"feature": "age", "reason": "Age"}]
    answer = {
        "predictions": [0],
        "probabilities": [[0.8, 0.2]],
        "id": "client-7",
        "explanations": [{"method": "tree_shap", "values": {"age": 0.1}, "reason_codes": reasons}],
    }
    decision = Decision(
        kind="predict",
        model=personal_model,
        request_id="r1",
        caller="alice",
        inputs=np.array([ROW]),
        answer=answer,
    )
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
    b = decision_body(
        Decision(
            kind="predict",
            model=personal_model,
            request_id="r",
            caller=None,
            inputs=np.array([row]),
            answer={"predictions": [0]},
        )
    )
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


# -- group commit in the audit thread ---------------------------------------------------


class _HeldSink(SQLiteSink):
    """Commits wait for ``release`` once ``hold`` is set: a slow disk on demand."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.hold = threading.Event()
        self.release = threading.Event()
        self.started = threading.Event()
        self.groups: list[int] = []

    def write(self, bodies: Any) -> Any:
        self.groups.append(len(bodies))
        held = self.hold.is_set()
        self.started.set()
        if held:
            self.release.wait(10)
        return super().write(bodies)


def test_records_of_one_loop_turn_share_a_commit_and_latecomers_the_next(
    tmp_path: Path,
) -> None:
    sink = _HeldSink(tmp_path / "audit.db")
    sink.open()
    audit = AuditLog(sink)

    async def go() -> None:
        # Recorded in one turn of the event loop (a micro-batch answered at once): one commit.
        await asyncio.gather(*(audit.append(body(i)) for i in range(20)))
        assert sink.groups == [20] and audit.commits == 1 and audit.records == 20
        # A lone record is committed at once, alone.
        await audit.append(body(20))
        assert sink.groups[-1] == 1
        # Records that arrive, turn after turn, while a commit runs wait for it and then
        # all go in the next one.
        sink.hold.set()
        sink.started.clear()
        first = asyncio.ensure_future(audit.append(body(21)))
        while not sink.started.is_set():
            await asyncio.sleep(0.001)
        sink.hold.clear()
        later = []
        for i in range(22, 32):
            later.append(asyncio.ensure_future(audit.append(body(i))))
            await asyncio.sleep(0)  # each in its own turn of the loop
        sink.release.set()
        records = await asyncio.gather(first, *later)
        assert [r.seq for r in records] == list(range(22, 33))
        assert sink.groups[-2:] == [1, 10]
        assert audit.records == 32 and audit.commits == 4
        await audit.close()

    asyncio.run(go())
    verdict = verify_sink(sink)
    assert verdict.ok and verdict.records == 32


def test_threads_committing_meanwhile_share_the_next_commit(
    tmp_path: Path, personal_model: ModelVersion
) -> None:
    """Worker threads commit their micro-batches themselves; those that arrive while a
    commit runs wait, and one of them commits for all (one fsync), each answered."""
    sink = _HeldSink(tmp_path / "audit.db")
    sink.open()
    audit = AuditLog(sink)

    def decisions(tag: str, n: int, row: list[float] = ROW) -> list[Decision]:
        return [
            Decision(
                kind="predict",
                model=personal_model,
                request_id=f"{tag}-{i}",
                caller=None,
                inputs=np.array([row]),
                answer={"predictions": [0]},
            )
            for i in range(n)
        ]

    errors: dict[str, list[Exception | None]] = {}

    def commit(tag: str, batch: list[Decision]) -> None:
        errors[tag] = audit.commit(batch)

    sink.hold.set()
    first = threading.Thread(target=commit, args=("first", decisions("first", 2)))
    first.start()
    assert sink.started.wait(10)
    sink.hold.clear()
    later = [
        threading.Thread(target=commit, args=(f"t{k}", decisions(f"t{k}", 3))) for k in range(4)
    ]
    later.append(threading.Thread(target=commit, args=("bad", decisions("bad", 1, ROW[:3]))))
    for t in later:
        t.start()
    while len(audit._waiting) < len(later):  # all of them wait behind the held commit
        threading.Event().wait(0.001)
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
    sink.close()


def test_a_decision_whose_record_cannot_be_built_is_refused_alone(
    tmp_path: Path, personal_model: ModelVersion
) -> None:
    sink = _sink(tmp_path)
    audit = AuditLog(sink)

    def decision(request_id: str, row: list[float]) -> Decision:
        return Decision(
            kind="predict",
            model=personal_model,
            request_id=request_id,
            caller=None,
            inputs=np.array([row]),
            answer={"predictions": [0]},
        )

    async def go() -> list[BaseException | None]:
        results = await asyncio.gather(
            audit.record(decision("good-1", ROW)),
            audit.record(decision("bad", ROW[:3])),  # fewer inputs than features
            audit.record(decision("good-2", ROW)),
            return_exceptions=True,
        )
        return list(results)

    good_1, bad, good_2 = asyncio.run(go())
    assert good_1 is None and good_2 is None and isinstance(bad, ValueError)
    assert [r.request_id for r in sink.query(Query())] == ["good-1", "good-2"]
    sink.close()


def test_a_closed_log_refuses_decisions(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    audit = AuditLog(sink)

    async def go() -> None:
        pending = asyncio.ensure_future(audit.append(body(1)))
        await asyncio.sleep(0)
        await audit.close()  # what was queued is committed first
        assert (await pending).seq == 1
        with pytest.raises(AuditUnavailable):
            await audit.append(body(2))

    asyncio.run(go())
    reopened = _sink(tmp_path)
    assert [r.seq for r in reopened.query(Query())] == [1]
    reopened.close()


# -- the SQLite sink: one statement per append, another writer noticed ---------------------


class _Counting:
    """A connection that notes the first word of every statement executed on it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements: list[str] = []

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self.statements.append(sql.split()[0])
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_sqlite_append_is_one_statement_unless_another_writer_moved_the_head(
    tmp_path: Path,
) -> None:
    mine, other = _sink(tmp_path), _sink(tmp_path)  # e.g. two server processes
    assert mine._writer is not None
    counting = _Counting(mine._writer)
    mine._writer = counting  # type: ignore[assignment]
    mine.append([body(1)])  # the first append reads the head under the lock
    assert counting.statements == ["BEGIN", "SELECT", "INSERT", "UPDATE", "COMMIT"]
    counting.statements.clear()
    mine.append([body(2), body(3), body(4)])
    assert counting.statements == ["INSERT"]  # its own transaction: one hand-over of the GIL
    other.append([body(5)])
    counting.statements.clear()
    last = mine.append([body(6)])  # the head moved: refused by the trigger, then re-chained
    assert counting.statements == ["INSERT", "BEGIN", "SELECT", "INSERT", "UPDATE", "COMMIT"]
    assert last[0].seq == 6
    assert [r.request_id for r in mine.query(Query())] == [f"req-{i}" for i in range(1, 7)]
    verdict = verify_sink(mine)
    assert verdict.ok and verdict.head.seq == 6 and verdict.head.hash == last[0].hash
    mine._writer = counting.conn
    mine.close()
    other.close()


# -- the SQLite sink: commits at NORMAL, made durable by our own fsync of the WAL -----------


class _Noting(SQLiteSink):
    """Notes, for each record written, how many writes had returned once it was."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.written_by: dict[str, int] = {}

    def write(self, bodies: Any) -> Any:
        records = super().write(bodies)
        for r in records:
            self.written_by[r.request_id] = self._written
        return records


def test_sqlite_commits_are_answered_only_after_an_fsync_of_the_wal_that_covers_them(
    tmp_path: Path, personal_model: ModelVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xserve.audit.sqlite as sqlite_sink

    sink = _Noting(tmp_path / "audit.db")
    sink.open()
    writer = sink._writer
    assert writer is not None and sink._wal is not None
    assert writer.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: we fsync
    assert os.fstat(sink._wal).st_ino == os.stat(f"{sink.path}-wal").st_ino
    real = sqlite_sink._fdatasync
    fsyncs: list[int] = []

    def fdatasync(fd: int) -> None:
        assert fd == sink._wal
        fsyncs.append(sink._written)
        time.sleep(0.002)  # a slow disk: the next writes land while it runs
        real(fd)

    monkeypatch.setattr(sqlite_sink, "_fdatasync", fdatasync)
    audit = AuditLog(sink)
    late: list[str] = []

    def commit(tag: str) -> None:
        batch = [
            Decision(
                kind="predict",
                model=personal_model,
                request_id=f"{tag}-{i}",
                caller=None,
                inputs=np.array([ROW]),
                answer={"predictions": [0]},
            )
            for i in range(2)
        ]
        assert audit.commit(batch) == [None, None]
        synced = sink._synced  # what the fsyncs that have ended cover
        late.extend(d.request_id for d in batch if sink.written_by[d.request_id] > synced)

    threads = [threading.Thread(target=commit, args=(f"t{k}",)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert late == []  # no decision answered before an fsync that began after its write
    assert len(sink.written_by) == 24 and sink._synced == sink._written
    assert 0 < len(fsyncs) <= sink._written  # fsyncs that found their writes covered skipped
    calls = len(fsyncs)
    sink.sync()  # nothing written since the last fsync: nothing to do
    assert len(fsyncs) == calls
    assert verify_sink(sink).ok
    sink.close()


def test_a_failed_fsync_refuses_its_decisions_and_every_later_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xserve.audit.sqlite as sqlite_sink

    sink = _sink(tmp_path)
    audit = AuditLog(sink)

    async def go(first: int) -> list[Any]:
        return await asyncio.gather(
            *(audit.append(body(i)) for i in range(first, first + 3)), return_exceptions=True
        )

    assert [r.seq for r in asyncio.run(go(1))] == [1, 2, 3]

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sqlite_sink, "_fdatasync", failing)
    refused = asyncio.run(go(4))
    assert all(isinstance(r, AuditUnavailable) and "fsync" in r.message for r in refused)
    monkeypatch.undo()  # the disk answers again: the pages it dropped are gone all the same
    later = asyncio.run(go(7))
    assert all(isinstance(r, AuditUnavailable) and "restart" in r.message for r in later)
    assert [r.seq for r in sink.query(Query())] == [1, 2, 3, 4, 5, 6]  # written, never answered
    sink.close()
