"""A real server with two worker processes on one SQLite log: the chain head is signed
every N records (whichever process gets there), checkpoints are shipped to the folder,
every file xserve makes is private, and records an older server stored with a client id
970 levels deep or holding a lone surrogate are read over HTTP without a 500."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import re
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.audit_support import body, serving
from tests.server import Server, copy_demo_models
from xserve.audit import AuditSink, sink_from_url
from xserve.audit.checkpoint import Checkpoint, read_checkpoints
from xserve.audit.checkpointer import CHECKPOINT_FILE
from xserve.audit.reading import OMITTED
from xserve.audit.record import Record, canonical, chain_hash
from xserve.audit.sql import row_of
from xserve.cli.main import main
from xserve.security.signing import write_key_pair

pytestmark = pytest.mark.http

EVERY = 10
IRIS = {"instances": [[5.1, 3.5, 1.4, 0.2]]}


@dataclass
class Signed:
    server: Server
    url: str
    db: Path
    shipped: Path
    public: Path


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    root = tmp_path_factory.mktemp("signed")
    models = copy_demo_models(root / "models", ["iris"])
    private, public, _ = write_key_pair(root / "keys" / "signing")
    db = root / "store" / "log" / "audit.db"  # folders the server makes
    shipped = root / "offsite" / "checkpoints"
    env = {
        "XSERVE_AUDIT_URL": f"sqlite:///{db}",
        "XSERVE_AUDIT_SIGNING_KEY": str(private),
        "XSERVE_AUDIT_CHECKPOINT_EVERY": str(EVERY),
        "XSERVE_AUDIT_CHECKPOINT_DIR": str(shipped),
    }
    with serving(models, env, workers=2) as server:
        yield Signed(server, f"sqlite:///{db}", db, shipped, public)


def _shipped(path: Path) -> list[Checkpoint]:
    if not path.exists():
        return []
    return sorted((c for _, c in read_checkpoints(path)), key=lambda c: c.seq)


def _reader(url: str) -> AuditSink:
    sink = sink_from_url(url)
    assert sink is not None
    sink.open(read_only=True)
    return sink


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_two_workers_sign_every_n_records_and_ship_them(signed: Signed) -> None:
    with signed.server.client() as c:
        for _ in range(6 * EVERY):
            assert c.post("/v1/models/iris/predict", json=IRIS).status_code == 200
    sink = _reader(signed.url)
    try:
        deadline = time.monotonic() + 10
        while True:  # stored first, then shipped: until both hold the last (>= 5 N)
            stored = sink.checkpoints()
            shipped = _shipped(signed.shipped / CHECKPOINT_FILE)
            if stored and stored[-1].seq >= 5 * EVERY and shipped == stored:
                break
            assert time.monotonic() < deadline, (stored, shipped)
            time.sleep(0.1)
        head = sink.head()
    finally:
        sink.close()
    seqs = [c.seq for c in stored]
    gaps = [b - a for a, b in itertools.pairwise([0, *seqs])]
    assert seqs[0] >= EVERY and all(gap < 2 * EVERY for gap in gaps), seqs
    assert len(seqs) <= head.seq // EVERY + 3, seqs  # not one per process per stretch
    shipped = [c for _, c in read_checkpoints(signed.shipped / CHECKPOINT_FILE)]
    assert sorted(shipped, key=lambda c: c.seq) == stored
    given = ["--checkpoint", str(signed.shipped / CHECKPOINT_FILE)]
    result = CliRunner().invoke(
        main, ["audit", "verify", "--url", signed.url, "--public-key", str(signed.public), *given]
    )
    assert result.exit_code == 0, result.output
    held = re.search(r"checkpoints: (\d+) hold", result.output)
    assert held is not None and int(held.group(1)) >= 2 * len(stored), result.output


def test_every_file_the_server_makes_is_private(signed: Signed) -> None:
    with signed.server.client() as c:
        assert c.post("/v1/models/iris/predict", json=IRIS).status_code == 200
    db = signed.db
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), db.with_name("audit.db.digest-key")):
        assert _mode(path) == 0o600, path
    for folder in (db.parent, db.parent.parent, signed.shipped, signed.shipped.parent):
        assert _mode(folder) == 0o700, folder
    deadline = time.monotonic() + 10
    while not (signed.shipped / CHECKPOINT_FILE).exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _mode(signed.shipped / CHECKPOINT_FILE) == 0o600


def _append_raw(db: Path, request_id: str, client_id: str) -> tuple[int, str]:
    """A record whose client id is the JSON text ``client_id``, chained after the head
    straight in the store, as a server before the id bound wrote them; its (seq, hash)."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        seq, prev = conn.execute("SELECT seq, hash FROM audit_head").fetchone()
        seq += 1
        fields = {**body(1, request_id=request_id, client_id="ID"), "seq": seq}
        text = canonical(fields).replace('"ID"', client_id)
        r = Record(seq, fields["time"], request_id, "alice", "credit-risk", "1", text, prev, "")
        r = dataclasses.replace(r, hash=chain_hash(prev, text))
        conn.execute("INSERT INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row_of(r))
        conn.execute("UPDATE audit_head SET seq = ?, hash = ?", (r.seq, r.hash))
        conn.execute("COMMIT")
    return r.seq, r.hash


def test_a_deeply_nested_client_id_stored_earlier_reads_over_http(signed: Signed) -> None:
    seq, hash_ = _append_raw(signed.db, "deep-id", "[" * 970 + '"bottom"' + "]" * 970)
    with signed.server.client() as c:
        found = c.get("/v1/audit/records", params={"request_id": "deep-id"})
        assert found.status_code == 200, found.text
        (stored,) = found.json()["records"]
        value = stored["client_id"]
        levels = 0
        while isinstance(value, list):
            value, levels = value[0], levels + 1
        assert value == OMITTED and 0 < levels < 64
        assert (stored["seq"], stored["hash"]) == (seq, hash_)
        after = 0
        while after is not None:  # every page, the deep record's among them
            page = c.get("/v1/audit/records", params={"after": after, "limit": 50})
            assert page.status_code == 200, page.text
            after = page.json()["next_after"]
        verdict = c.get("/v1/audit/verify")
        assert verdict.status_code == 200 and verdict.json()["ok"] is True, verdict.text
    result = CliRunner().invoke(main, ["audit", "verify", "--url", signed.url])
    assert result.exit_code == 0 and "chain intact" in result.output
    exported = CliRunner().invoke(main, ["audit", "export", "--url", signed.url])
    assert exported.exit_code == 0
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert "deep-id" in {line["request_id"] for line in lines}


def test_a_lone_surrogate_stored_earlier_reads_over_http(signed: Signed) -> None:
    seq, _ = _append_raw(signed.db, "surrogate-id", '"a\\ud800b"')
    with signed.server.client() as c:
        found = c.get("/v1/audit/records", params={"request_id": "surrogate-id"})
        assert found.status_code == 200, found.text
        (stored,) = found.json()["records"]
        assert stored["seq"] == seq and stored["client_id"] == "a\ufffdb"
        verdict = c.get("/v1/audit/verify")
        assert verdict.status_code == 200 and verdict.json()["ok"] is True, verdict.text
