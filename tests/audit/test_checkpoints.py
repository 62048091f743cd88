"""Signed checkpoints of the chain head: a whole-chain rewrite that passes the plain
chain check is found by a checkpoint shipped before it; forged checkpoints are found;
the seconds mode signs on time; keys and checkpoint files are private (SQLite and
PostgreSQL)."""

from __future__ import annotations

import itertools
import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.audit_support import BACKENDS, audit_url, body, execute, open_sink, rewrite_chain
from xserve.audit import AuditSink, Head, verify_sink
from xserve.audit.checkpoint import Checkpoint, Every, Signer, read_checkpoints
from xserve.audit.checkpointer import CHECKPOINT_FILE, Checkpointer
from xserve.cli.main import main
from xserve.security.signing import load_private_key


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with audit_url(request.param, tmp_path) as u:
        yield u


@pytest.fixture
def sink(url: str) -> Iterator[AuditSink]:
    s = open_sink(url)
    yield s
    s.close()


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def _key_pair(prefix: Path) -> tuple[Path, Path]:
    result = _run("keys", "signing-key", "--out", str(prefix))
    assert result.exit_code == 0, result.output
    return prefix, prefix.with_name(prefix.name + ".pub")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return _key_pair(tmp_path / "keys" / "audit-signing")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _checkpoint(url: str, private: Path, out: Path) -> Checkpoint:
    result = _run("audit", "checkpoint", "--url", url, "--key", str(private), "--out", str(out))
    assert result.exit_code == 0, result.output
    return Checkpoint.from_dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _verify(url: str, *args: str) -> Result:
    return _run("audit", "verify", "--url", url, *args)


def test_signing_key_pair_is_private_and_never_overwritten(tmp_path: Path) -> None:
    prefix = tmp_path / "new" / "keys" / "signing"
    result = _run("keys", "signing-key", "--out", str(prefix))
    assert result.exit_code == 0, result.output
    public = prefix.with_name("signing.pub")
    assert b"PRIVATE KEY" in prefix.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    assert _mode(prefix) == _mode(public) == 0o600
    assert _mode(prefix.parent) == _mode(prefix.parent.parent) == 0o700  # made by xserve
    assert result.stdout.strip() == Signer(load_private_key(prefix)).key_id
    before = prefix.read_bytes()
    again = _run("keys", "signing-key", "--out", str(prefix))
    assert again.exit_code != 0 and "never overwritten" in again.output
    assert prefix.read_bytes() == before


def test_a_whole_chain_rewrite_passes_the_chain_check_but_not_a_shipped_checkpoint(
    url: str, sink: AuditSink, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    sink.append([body(i) for i in range(1, 21)])
    shipped = tmp_path / "offsite" / "shipped.jsonl"
    signed = _checkpoint(url, private, shipped)
    assert (signed.seq, signed.hash) == (20, sink.head().hash)
    later = tmp_path / "offsite" / "later.jsonl"  # a second copy, another file
    later.write_text(shipped.read_text())
    assert _verify(url, "--checkpoint", str(shipped), "--public-key", str(public)).exit_code == 0

    rewrite_chain(url, 3)  # record 3 altered, every hash after it and the head recomputed
    execute(url, "DELETE FROM audit_checkpoints")  # and the stored checkpoints removed
    plain = _verify(url)
    assert plain.exit_code == 0 and "chain intact" in plain.output  # the chain alone: fooled
    assert sink.head().hash != signed.hash

    found = _verify(url, "--public-key", str(public), "--checkpoint", str(shipped), str(later))
    assert found.exit_code == 1, found.output
    assert f"CHECKPOINT FAILED: checkpoint {shipped}:1 (record 20)" in found.output
    assert f"CHECKPOINT FAILED: checkpoint {later}:1 (record 20)" in found.output
    assert "rewritten" in found.output


def test_stored_checkpoints_catch_a_rewrite_that_leaves_them(
    url: str, sink: AuditSink, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    sink.append([body(i) for i in range(1, 11)])
    _checkpoint(url, private, tmp_path / "cp.jsonl")
    rewrite_chain(url, 5)
    result = _verify(url, "--public-key", str(public))
    assert result.exit_code == 1
    assert "checkpoint stored (record 10)" in result.output
    unchecked = _verify(url)  # without the key the stored ones are only mentioned
    assert unchecked.exit_code == 0 and "pass --public-key" in unchecked.output


def test_records_after_the_last_checkpoint_are_not_covered(
    url: str, sink: AuditSink, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """What a checkpoint cannot prove: a rewrite of records signed by none."""
    private, public = keys
    sink.append([body(i) for i in range(1, 11)])
    shipped = tmp_path / "cp.jsonl"
    _checkpoint(url, private, shipped)
    sink.append([body(i) for i in range(11, 16)])
    rewrite_chain(url, 12)
    result = _verify(url, "--checkpoint", str(shipped), "--public-key", str(public))
    assert result.exit_code == 0, result.output
    assert "records 1-10 are as signed; records 11-15 are covered by none" in result.output


def test_a_truncated_chain_is_found(
    url: str, sink: AuditSink, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    sink.append([body(i) for i in range(1, 11)])
    shipped = tmp_path / "cp.jsonl"
    _checkpoint(url, private, shipped)
    (hash_8,) = execute(url, "SELECT hash FROM audit_records WHERE seq = 8")[0]
    execute(url, "DELETE FROM audit_records WHERE seq > 8")
    execute(url, "UPDATE audit_head SET seq = 8, hash = ? WHERE id = 1", (hash_8,))
    assert _verify(url).exit_code == 0  # the chain alone: fooled
    result = _verify(url, "--checkpoint", str(shipped), "--public-key", str(public))
    assert result.exit_code == 1
    assert "no longer holds record 10" in result.output


def test_forged_checkpoints_are_found(
    url: str, sink: AuditSink, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    sink.append([body(i) for i in range(1, 11)])
    genuine = _checkpoint(url, private, tmp_path / "genuine.jsonl")
    execute(url, "DELETE FROM audit_checkpoints")
    rewrite_chain(url, 2)
    new_head = sink.head()

    # The genuine signature over the rewritten head: it signed another hash.
    altered = tmp_path / "altered.jsonl"
    altered.write_text(json.dumps({**genuine.to_dict(), "hash": new_head.hash}) + "\n")
    # A checkpoint of the rewritten head, signed by a key the auditor was not given.
    other_private, _ = _key_pair(tmp_path / "other" / "key")
    other = tmp_path / "other.jsonl"
    other.write_text(Signer(load_private_key(other_private)).sign(new_head).to_json() + "\n")

    for forged, reason in ((altered, "does not verify"), (other, "not by a given public key")):
        result = _verify(url, "--checkpoint", str(forged), "--public-key", str(public))
        assert result.exit_code == 1, result.output
        assert f"checkpoint {forged}:1 (record 10)" in result.output
        assert reason in result.output

    # The insider stores checkpoints of the rewrite signed with their own key: refused too.
    forged_stored = Signer(load_private_key(other_private)).sign(new_head)
    assert sink.add_checkpoint(forged_stored)
    result = _verify(url, "--public-key", str(public))
    assert result.exit_code == 1 and "checkpoint stored (record 10)" in result.output


def test_a_malformed_checkpoint_file_fails_naming_the_line(
    url: str, sink: AuditSink, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    sink.append([body(1)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"seq": 1}\n')
    result = _verify(url, "--checkpoint", str(bad), "--public-key", str(keys[1]))
    assert result.exit_code == 1
    assert f"checkpoint {bad}:1" in result.output
    assert _verify(url, "--checkpoint", str(bad)).exit_code == 2  # no key: a usage error


def test_checkpoint_command_stores_and_ships_privately(
    url: str, sink: AuditSink, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    sink.append([body(i) for i in range(1, 4)])
    folder = tmp_path / "ship" / "here"
    env = {"XSERVE_AUDIT_CHECKPOINT_DIR": str(folder), "XSERVE_AUDIT_SIGNING_KEY": str(keys[0])}
    result = _run("audit", "checkpoint", "--url", url, env=env)
    assert result.exit_code == 0, result.output
    printed = Checkpoint.from_dict(json.loads(result.stdout))
    shipped = folder / CHECKPOINT_FILE
    assert [c for _, c in read_checkpoints(shipped)] == [printed]
    assert sink.checkpoints() == [printed]
    assert _mode(shipped) == 0o600 and _mode(folder) == _mode(folder.parent) == 0o700


def test_checkpoint_command_creates_no_log(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    missing = tmp_path / "nothing" / "audit.db"
    result = _run("audit", "checkpoint", "--url", f"sqlite:///{missing}", "--key", str(keys[0]))
    assert result.exit_code == 2 and "not an audit log" in result.output
    assert not missing.parent.exists()


def test_the_seconds_mode_signs_on_time(
    url: str, sink: AuditSink, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "checkpoints"
    signer = Signer(load_private_key(keys[0]))
    checkpointer = Checkpointer(sink, signer, Every.parse("0.4s"), folder)
    checkpointer.start()
    try:
        deadline = time.monotonic() + 3.2
        i = 0
        while time.monotonic() < deadline:
            i += 1
            sink.append([body(i % 60)])
            time.sleep(0.02)
    finally:
        checkpointer.close()
    stored = sink.checkpoints()
    # About one per 0.4 s over 3.2 s (the last signed at close): never one per record.
    assert 4 <= len(stored) <= 10, [c.time for c in stored]
    assert [c for _, c in read_checkpoints(folder / CHECKPOINT_FILE)] == stored
    assert stored[-1].seq == sink.head().seq  # close signed the last head
    result = _verify(url, "--public-key", str(keys[1]))
    assert result.exit_code == 0, result.output
    assert f"{len(stored)} hold" in result.output
    assert verify_sink(sink).ok


def test_the_records_mode_signs_every_n_records(
    url: str, sink: AuditSink, keys: tuple[Path, Path]
) -> None:
    """The group commit tells the checkpointer each durable head; a second checkpointer
    on the same store (another process) does not sign the same stretch again."""
    signer = Signer(load_private_key(keys[0]))
    first = Checkpointer(sink, signer, Every.parse("10"))
    second = Checkpointer(sink, signer, Every.parse("10"))
    first.start()
    second.start()
    try:
        for i in range(1, 61):
            (record,) = sink.append([body(i % 60)])
            first.noticed(Head(record.seq, record.hash))
            second.noticed(Head(record.seq, record.hash))
            time.sleep(0.005)
        deadline = time.monotonic() + 5
        while (latest := sink.latest_checkpoint()) is None or latest.seq < 50:
            assert time.monotonic() < deadline, sink.checkpoints()
            time.sleep(0.05)
    finally:
        first.close()
        second.close()
    seqs = [c.seq for c in sink.checkpoints()]
    gaps = [b - a for a, b in itertools.pairwise([0, *seqs])]
    # One per 10 records or so (signing lags a little on a busy machine), not one per
    # process per stretch.
    assert seqs[0] >= 10 and all(gap < 20 for gap in gaps), seqs
    assert len(seqs) <= 9, seqs


def test_a_log_from_before_checkpoints_verifies_read_only(
    url: str, sink: AuditSink, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """A log written before the checkpoints table existed: nothing stored to check, and
    a checkpoint file is still checked against its records; nothing is created."""
    sink.append([body(i) for i in range(1, 6)])
    shipped = tmp_path / "cp.jsonl"
    _checkpoint(url, keys[0], shipped)
    execute(url, "DROP TABLE audit_checkpoints")
    alone = _verify(url, "--public-key", str(keys[1]))
    assert alone.exit_code == 0 and "none given or stored" in alone.output, alone.output
    given = _verify(url, "--public-key", str(keys[1]), "--checkpoint", str(shipped))
    assert given.exit_code == 0 and "records 1-5 are as signed" in given.output, given.output
    assert _verify(url).exit_code == 0
    tables = (
        "SELECT name FROM sqlite_master WHERE name = 'audit_checkpoints'"
        if url.startswith("sqlite")
        else "SELECT 1 WHERE to_regclass('audit_checkpoints') IS NOT NULL"
    )
    assert execute(url, tables) == []  # the verifier created nothing
