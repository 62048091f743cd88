"""A real server with two worker processes on one PostgreSQL log: the chain head is signed
every N records and shipped; after an insider rewrites the whole chain (head included)
and removes the stored checkpoints, the chain alone verifies but the shipped checkpoints
do not."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.audit_support import execute, pg_schema, rewrite_chain, serving
from tests.server import Server, copy_demo_models
from xserve.audit import AuditSink, sink_from_url
from xserve.audit.checkpoint import Checkpoint, read_checkpoints
from xserve.audit.checkpointer import CHECKPOINT_FILE
from xserve.cli.main import main
from xserve.security.signing import write_key_pair

pytestmark = pytest.mark.http

EVERY = 10
IRIS = {"instances": [[5.1, 3.5, 1.4, 0.2]]}


@dataclass
class Signed:
    server: Server
    url: str
    shipped: Path
    public: Path


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    root = tmp_path_factory.mktemp("signed-pg")
    models = copy_demo_models(root / "models", ["iris"])
    private, public, _ = write_key_pair(root / "keys" / "signing")
    shipped = root / "offsite"
    with pg_schema() as url:
        env = {
            "XSERVE_AUDIT_URL": url,
            "XSERVE_AUDIT_DIGEST_KEY": "pepper-for-tests",
            "XSERVE_AUDIT_SIGNING_KEY": str(private),
            "XSERVE_AUDIT_CHECKPOINT_EVERY": str(EVERY),
            "XSERVE_AUDIT_CHECKPOINT_DIR": str(shipped),
        }
        with serving(models, env, workers=2) as server:
            yield Signed(server, url, shipped / CHECKPOINT_FILE, public)


def _shipped(path: Path) -> list[Checkpoint]:
    if not path.exists():
        return []
    return sorted((c for _, c in read_checkpoints(path)), key=lambda c: c.seq)


def _reader(url: str) -> AuditSink:
    sink = sink_from_url(url)
    assert sink is not None
    sink.open(read_only=True)
    return sink


def _verify(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["audit", "verify", "--url", url, *args])


def test_signed_every_n_records_then_a_rewrite_is_found(signed: Signed) -> None:
    with signed.server.client() as c:
        for _ in range(6 * EVERY):
            assert c.post("/v1/models/iris/predict", json=IRIS).status_code == 200
    sink = _reader(signed.url)
    try:
        deadline = time.monotonic() + 10
        while True:  # stored first, then shipped: until both hold the last (>= 5 N)
            stored = sink.checkpoints()
            shipped = _shipped(signed.shipped)
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
    assert len(seqs) <= head.seq // EVERY + 3, seqs
    keyed = ("--public-key", str(signed.public), "--checkpoint", str(signed.shipped))
    before = _verify(signed.url, *keyed)
    assert before.exit_code == 0, before.output

    rewrite_chain(signed.url, 3)
    execute(signed.url, "DELETE FROM audit_checkpoints")
    plain = _verify(signed.url)
    assert plain.exit_code == 0 and "chain intact" in plain.output  # fooled
    after = _verify(signed.url, *keyed)
    assert after.exit_code == 1
    assert f"checkpoint {signed.shipped}:" in after.output and "rewritten" in after.output
    assert re.search(r"checkpoints: (\d+) of \1 fail", after.output), after.output  # each
