"""One suite for every audit sink (SQLite and PostgreSQL): chaining, queries, tampering,
concurrent writers."""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.audit_support import (
    BACKENDS,
    TcpProxy,
    audit_url,
    body,
    execute,
    open_sink,
    pg_schema,
)
from tests.server import free_port
from xserve.audit import GENESIS, AuditSink, Query, sink_from_url, verify_sink
from xserve.audit.record import chain_hash, seal
from xserve.errors import AuditUnavailable


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with audit_url(request.param, tmp_path) as u:
        yield u


@pytest.fixture
def sink(url: str) -> Iterator[AuditSink]:
    s = open_sink(url)
    yield s
    s.close()


def test_append_numbers_and_chains_records(sink: AuditSink) -> None:
    first = sink.append([body(1), body(2)])
    second = sink.append([body(3)])
    records = first + second
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0].prev_hash == GENESIS
    for prev, r in itertools.pairwise(records):
        assert r.prev_hash == prev.hash
        assert r.hash == chain_hash(r.prev_hash, r.body)
    stored = sink.query(Query())
    assert stored == records
    assert stored[2].to_dict()["request_id"] == "req-3" and stored[2].to_dict()["seq"] == 3
    verdict = verify_sink(sink)
    assert verdict.ok and verdict.records == 3 and verdict.head.hash == records[-1].hash
    assert sink.transactions == 2


def test_empty_store_verifies(sink: AuditSink) -> None:
    verdict = verify_sink(sink)
    assert verdict.ok and verdict.records == 0 and verdict.head.seq == 0


def test_reopening_continues_the_chain(url: str, sink: AuditSink) -> None:
    sink.append([body(1)])
    other = open_sink(url)  # e.g. after a restart: open() must not reset the head
    try:
        other.append([body(2)])
    finally:
        other.close()
    assert [r.seq for r in sink.query(Query())] == [1, 2]
    assert verify_sink(sink).ok


def test_appends_after_another_writers_stay_one_chain(url: str, sink: AuditSink) -> None:
    other = open_sink(url)  # another server process on the same store
    try:
        sink.append([body(1)])
        sink.append([body(2), body(3), body(4)])
        (moved,) = other.append([body(5)])  # the head moves behind this sink's back
        (last,) = sink.append([body(6)])
        assert other.append([body(7)])[0].prev_hash == last.hash
    finally:
        other.close()
    assert last.seq == 6 and last.prev_hash == moved.hash
    stored = sink.query(Query())
    assert [r.request_id for r in stored] == [f"req-{i}" for i in range(1, 8)]
    verdict = verify_sink(sink)
    assert verdict.ok and verdict.head.seq == 7


def test_a_large_append_is_one_transaction(sink: AuditSink) -> None:
    sink.append([body(0)])
    records = sink.append([body(i % 60, request_id=f"big-{i}") for i in range(1, 251)])
    assert [r.seq for r in records] == list(range(2, 252))
    assert sink.transactions == 2
    stored = sink.query(Query(after=1, limit=1000))
    assert stored == records
    assert verify_sink(sink).ok


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreachable_store_fails_to_open(backend: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    url = {
        "sqlite": f"sqlite:///{tmp_path / 'file' / 'audit.db'}",
        "postgres": f"postgresql://postgres@127.0.0.1:{free_port()}/test",
    }[backend]
    sink = sink_from_url(url)
    assert sink is not None
    with pytest.raises(AuditUnavailable):
        sink.open()


def test_query_filters_and_pages(sink: AuditSink) -> None:
    sink.append(
        [
            body(i, model="credit-risk" if i % 2 else "iris", version=str(1 + i % 3))
            for i in range(1, 11)
        ]
    )
    assert [r.seq for r in sink.query(Query(model="iris"))] == [2, 4, 6, 8, 10]
    assert [r.seq for r in sink.query(Query(model="iris", version="1"))] == [6]
    assert [r.seq for r in sink.query(Query(request_id="req-7"))] == [7]
    since, until = "2024-05-01T10:00:03.000000Z", "2024-05-01T10:00:06.000000Z"
    assert [r.seq for r in sink.query(Query(since=since, until=until))] == [3, 4, 5]
    pages, after = [], 0
    for _ in range(10):  # bounded: 4 pages expected
        page = sink.query(Query(after=after, limit=3))
        if not page:
            break
        pages.append([r.seq for r in page])
        after = page[-1].seq
    assert pages == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]


# -- tampering: every kind is found at the right record ----------------------------------

Tamper = Callable[[str], None]


def _edit_body(url: str) -> None:
    (text,) = execute(url, "SELECT body FROM audit_records WHERE seq = 3")[0]
    execute(
        url,
        "UPDATE audit_records SET body = ? WHERE seq = 3",
        (text.replace('"predictions":[1]', '"predictions":[0]'),),
    )


def _edit_column(url: str) -> None:
    execute(url, "UPDATE audit_records SET caller = 'mallory' WHERE seq = 3")


def _edit_and_rehash(url: str) -> None:
    prev, text = execute(url, "SELECT prev_hash, body FROM audit_records WHERE seq = 3")[0]
    text = text.replace('"predictions":[1]', '"predictions":[0]')
    execute(
        url,
        "UPDATE audit_records SET body = ?, hash = ? WHERE seq = 3",
        (text, chain_hash(prev, text)),
    )


def _delete_middle(url: str) -> None:
    execute(url, "DELETE FROM audit_records WHERE seq = 3")


def _delete_first(url: str) -> None:
    execute(url, "DELETE FROM audit_records WHERE seq = 1")


def _delete_last(url: str) -> None:
    execute(url, "DELETE FROM audit_records WHERE seq = 6")


def _insert_forged(url: str) -> None:
    """A well-formed record slipped in at 3, the later ones renumbered to make room."""
    for seq in range(6, 2, -1):
        execute(url, "UPDATE audit_records SET seq = ? WHERE seq = ?", (seq + 1, seq))
    (prev_hash,) = execute(url, "SELECT hash FROM audit_records WHERE seq = 2")[0]
    forged = seal(body(99, caller="mallory"), 3, prev_hash)
    execute(
        url,
        "INSERT INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            forged.seq,
            forged.time,
            forged.request_id,
            forged.caller,
            forged.model,
            forged.version,
            forged.body,
            forged.prev_hash,
            forged.hash,
        ),
    )
    execute(url, "UPDATE audit_head SET seq = 7")


def _swap(url: str) -> None:
    execute(url, "UPDATE audit_records SET seq = -4 WHERE seq = 4")
    execute(url, "UPDATE audit_records SET seq = 4 WHERE seq = 3")
    execute(url, "UPDATE audit_records SET seq = 3 WHERE seq = -4")


def _append_outside(url: str) -> None:
    """A correctly chained record added at the end without going through xserve."""
    (prev_hash,) = execute(url, "SELECT hash FROM audit_records WHERE seq = 6")[0]
    r = seal(body(7), 7, prev_hash)
    execute(
        url,
        "INSERT INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (r.seq, r.time, r.request_id, r.caller, r.model, r.version, r.body, r.prev_hash, r.hash),
    )


TAMPERING: dict[str, tuple[Tamper, int, str]] = {
    "edit a field": (_edit_body, 3, "edited"),
    "edit an indexed column": (_edit_column, 3, "edited"),
    "edit and re-hash": (_edit_and_rehash, 3, "altered"),
    "delete a record": (_delete_middle, 3, "missing"),
    "delete the first record": (_delete_first, 1, "missing"),
    "delete the last record": (_delete_last, 6, "missing"),
    "insert a forged record": (_insert_forged, 3, "inserted"),
    "swap two records": (_swap, 3, "out of place"),
    "append outside xserve": (_append_outside, 7, "beyond the chain head"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_tampering_is_found_at_the_right_record(sink: AuditSink, url: str, kind: str) -> None:
    tamper, bad, reason = TAMPERING[kind]
    sink.append([body(i) for i in range(1, 4)])
    sink.append([body(i) for i in range(4, 7)])
    assert verify_sink(sink).ok
    tamper(url)
    verdict = verify_sink(sink)
    assert not verdict.ok
    assert verdict.first_bad == bad, verdict
    assert verdict.reason is not None and reason in verdict.reason, verdict


# -- several processes appending at once ---------------------------------------------------


def _writer(url: str, tag: str, batches: int, start: multiprocessing.synchronize.Event) -> None:
    sink = open_sink(url)
    start.wait(30)
    for b in range(batches):
        sink.append([body(0, request_id=f"{tag}-{b}-{i}") for i in range(3)])
    sink.close()


def test_two_processes_append_one_chain(url: str, sink: AuditSink) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(url, tag, 40, start)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    records = []
    after = 0
    for _ in range(10):
        page = sink.query(Query(after=after, limit=1000))
        if not page:
            break
        records += page
        after = page[-1].seq
    assert [r.seq for r in records] == list(range(1, 241))
    ids = {r.request_id for r in records}
    assert len(ids) == 240 and {i[0] for i in ids} == {"a", "b"}
    # Each transaction's three records stay together: the lock covered the whole append.
    for r in records[::3]:
        tag, batch, _ = r.request_id.split("-")
        following = records[r.seq : r.seq + 2]
        assert [x.request_id for x in following] == [f"{tag}-{batch}-1", f"{tag}-{batch}-2"]
    assert verify_sink(sink).ok


def test_postgres_replaces_a_connection_the_server_dropped() -> None:
    proxy = TcpProxy(target_port=5432).start()
    try:
        with pg_schema(f"127.0.0.1:{proxy.port}") as url:
            sink = open_sink(url)
            try:
                sink.append([body(1)])
                proxy.stop()  # every connection dropped (a restart, a failover) ...
                proxy.start()  # ... and the server reachable again
                # The kept connection is dead; nothing was committed on it: retried, not refused.
                assert [r.seq for r in sink.append([body(2)])] == [2]
                assert verify_sink(sink).ok
            finally:
                sink.close()
    finally:
        proxy.close()
