"""Durability under failure: kill -9 under load, several servers on one chain, the store
going away and coming back."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.audit_support import BACKENDS, TcpProxy, audit_url, open_sink, pg_schema
from tests.server import copy_demo_models, free_port, running_server, serve_command
from xserve.audit import Query, verify_sink

pytestmark = pytest.mark.http

ROW = [35, 52000, 0.31, 0.45, 4, 0, 30, 12000]
PREDICT = "/v1/models/credit-risk/predict"


def stored_request_ids(url: str) -> list[str]:
    sink = open_sink(url)
    try:
        assert verify_sink(sink).ok, verify_sink(sink)
        ids: list[str] = []
        after = 0
        for _ in range(1000):  # bounded paging
            page = sink.query(Query(after=after, limit=1000))
            if not page:
                return ids
            ids += [r.request_id for r in page]
            after = page[-1].seq
        raise AssertionError("too many pages")
    finally:
        sink.close()


@contextmanager
def server_group(root: Path, env: dict[str, str], workers: int) -> Iterator[tuple[int, str]]:
    """``xserve serve`` in its own process group (so kill -9 reaches its workers too)."""
    port = free_port()
    log = root.parent / f"group-{port}.log"
    cmd = serve_command(port, workers)
    with log.open("wb") as out:
        full_env = {**os.environ, "XSERVE_MODELS_DIR": str(root), **env}
        proc = subprocess.Popen(
            cmd,
            env=full_env,
            cwd=root.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        ready = 0
        while ready < 5:  # several answers in a row: both workers are likely up
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                ok = httpx.post(base + PREDICT, json={"instances": [ROW]}, timeout=2).status_code
                ready = ready + 1 if ok == 200 else 0
            except httpx.HTTPError:
                ready = 0
                time.sleep(0.1)
        yield proc.pid, base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class Load:
    """Clients posting predicts in closed loop; collects the request ids answered 200."""

    def __init__(self, bases: list[str], per_base: int, max_requests: int) -> None:
        self.acked: list[str] = []
        self.other: list[int] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(b, max_requests))
            for b in bases
            for _ in range(per_base)
        ]
        for t in self.threads:
            t.start()

    def _run(self, base: str, max_requests: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as c:
            for _ in range(max_requests):
                if self.stop.is_set():
                    return
                try:
                    r = c.post(PREDICT, json={"instances": [ROW]})
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    self.acked.append(r.json()["request_id"])
                else:
                    self.other.append(r.status_code)

    def wait(self, acked: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < acked and time.monotonic() < deadline:
            time.sleep(0.02)

    def join(self, stop: bool = True) -> None:
        """Wait for the clients; with ``stop``, tell them to finish first."""
        if stop:
            self.stop.set()
        for t in self.threads:
            t.join(60)
            assert not t.is_alive()


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_under_load_loses_no_acknowledged_decision(tmp_path: Path, backend: str) -> None:
    root = copy_demo_models(tmp_path / "models")
    with audit_url(backend, tmp_path) as url:
        with server_group(root, {"XSERVE_AUDIT_URL": url}, workers=2) as (pgid, base):
            load = Load([base], per_base=6, max_requests=5000)
            load.wait(acked=200, timeout=60)
            os.killpg(pgid, signal.SIGKILL)  # mid-flight: commits in progress, clients waiting
            load.join()
        assert len(load.acked) >= 200, (len(load.acked), load.other)
        assert load.other == []
        stored = stored_request_ids(url)  # also: the chain verifies after the crash
        missing = set(load.acked) - set(stored)
        assert not missing, f"{len(missing)} acknowledged decisions have no record"
        assert len(stored) == len(set(stored))


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_servers_write_one_chain(tmp_path: Path, backend: str) -> None:
    root = copy_demo_models(tmp_path / "models")
    with audit_url(backend, tmp_path) as url:
        env = {"XSERVE_AUDIT_URL": url}
        with running_server(root, env=env) as a, running_server(root, env=env) as b:
            load = Load([a.url, b.url], per_base=3, max_requests=40)
            load.join(stop=False)
        assert len(load.acked) == 240 and load.other == []
        stored = stored_request_ids(url)
    # Startup readiness probes make no decisions: exactly the acknowledged ones are there.
    assert sorted(stored) == sorted(load.acked)


def test_store_down_refuses_decisions_with_503_then_recovers(tmp_path: Path) -> None:
    root = copy_demo_models(tmp_path / "models")
    proxy = TcpProxy(target_port=5432).start()
    try:
        with (
            pg_schema(f"127.0.0.1:{proxy.port}") as url,
            running_server(root, env={"XSERVE_AUDIT_URL": url}) as server,
            server.client(timeout=30) as c,
        ):
            acked = [c.post(PREDICT, json={"instances": [ROW]}).json()["request_id"]]
            proxy.stop()
            for _ in range(3):
                r = c.post(PREDICT, json={"instances": [ROW]})
                assert r.status_code == 503, r.text
                assert r.json()["code"] == "audit_unavailable"
                assert int(r.headers["retry-after"]) >= 1
            assert c.get("/v1/models/credit-risk").status_code == 200  # only decisions stop
            proxy.start()
            deadline = time.monotonic() + 15
            status = 0
            while status != 200 and time.monotonic() < deadline:
                r = c.post(PREDICT, json={"instances": [ROW]})
                status = r.status_code
                if status == 200:
                    acked.append(r.json()["request_id"])
                else:
                    time.sleep(0.1)
            assert status == 200, r.text
            acked.append(c.post(PREDICT, json={"instances": [ROW]}).json()["request_id"])
            assert stored_request_ids(url) == acked
    finally:
        proxy.close()
