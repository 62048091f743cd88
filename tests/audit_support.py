"""Helpers for the audit tests: a sink per backend, raw SQL for tampering (a whole-chain
rewrite too), a TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from xserve.audit import AuditSink, sink_from_url

if TYPE_CHECKING:
    from tests.server import Server
from xserve.audit.record import canonical, chain_hash

SERVER_READY_S = 180
"""How long :func:`serving` waits for a server: several workers start slowly on a busy machine."""

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", "postgres"]


@contextlib.contextmanager
def pg_schema(host_port: str = "127.0.0.1:5432") -> Iterator[str]:
    """A fresh schema; yields an audit URL whose tables live in it. Dropped afterwards."""
    name = f"xserve_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield f"postgresql://postgres@{host_port}/test?options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


@contextlib.contextmanager
def audit_url(backend: str, tmp: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'audit' / 'audit.db'}"
    else:
        with pg_schema() as url:
            yield url


def open_sink(url: str) -> AuditSink:
    sink = sink_from_url(url)
    assert sink is not None
    sink.open()
    return sink


def execute(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run ``sql`` ("?" placeholders) straight on the store, as someone tampering would."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            rows = conn.execute(sql, params).fetchall()
            conn.commit()
            return rows
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


@contextlib.contextmanager
def serving(models: Path, env: dict[str, str], workers: int) -> Iterator[Server]:
    """``running_server``'s launch with a longer wait for readiness: two worker processes
    start slowly on a busy machine."""
    # Imported here: tests.server copies the demo models when first imported.
    from tests.server import Server, free_port, serve_command, stop

    port = free_port()
    log = models.parent / f"server-{port}.log"
    full_env = {**os.environ, "XSERVE_MODELS_DIR": str(models), **env}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            serve_command(port, workers),
            env=full_env,
            cwd=models.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(models, port, proc, log)
    try:
        deadline = time.monotonic() + SERVER_READY_S
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/health/ready", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()}"
            time.sleep(0.2)
        yield server
    finally:
        stop(proc, timeout=15)


def rewrite_chain(url: str, seq: int) -> None:
    """An insider's rewrite: record ``seq``'s output altered, then every hash from it on
    recomputed and the head moved to match, so that the chain alone verifies."""
    rows = execute(
        url, "SELECT seq, prev_hash, body FROM audit_records WHERE seq >= ? ORDER BY seq", (seq,)
    )
    prev = rows[0][1]
    for number, _, text in rows:
        if number == seq:
            altered = json.loads(text)
            altered["output"] = {"predictions": ["rewritten"]}
            text = canonical(altered)
        new_hash = chain_hash(prev, text)
        execute(
            url,
            "UPDATE audit_records SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (text, prev, new_hash, number),
        )
        prev = new_hash
    execute(url, "UPDATE audit_head SET hash = ? WHERE id = 1", (prev,))


def body(i: int, model: str = "credit-risk", version: str = "1", **extra: Any) -> dict[str, Any]:
    out = {
        "kind": "predict",
        "time": f"2024-05-01T10:00:{i:02d}.000000Z",
        "request_id": f"req-{i}",
        "caller": "alice",
        "model": model,
        "version": version,
        "artifact_sha256": "ab" * 32,
        "input": [{"income": 52000 + i, "ratio": 0.31}],
        "output": {"predictions": [i % 2], "probabilities": [[0.25, 0.75]]},
        "explanations": None,
        "reason_codes": None,
    }
    out.update(extra)
    return out


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``stop()`` drops the listener and every
    connection (the target looks down), ``start()`` brings it back on the same port."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    async def _start(self) -> None:
        self._server = await asyncio.start_server(
            self._client, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def start(self) -> TcpProxy:
        self._run(self._start())
        return self

    def stop(self) -> None:
        self._run(self._stop())

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
