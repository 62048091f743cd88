"""A real ``xserve serve`` process on a free loopback port, for HTTP tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DEMO_MODELS = REPO / "models"


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Ask a process to stop; kill it if it has not within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_demo_models(target: Path) -> Path:
    shutil.copytree(DEMO_MODELS, target)
    return target


class Server:
    def __init__(
        self, models_dir: Path, port: int, proc: subprocess.Popen[bytes], log: Path
    ) -> None:
        self.models_dir = models_dir
        self.port = port
        self.proc = proc
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


@contextmanager
def running_server(
    models_dir: Path, workers: int = 1, env: dict[str, str] | None = None, poll: float = 0.2
) -> Iterator[Server]:
    port = free_port()
    log = models_dir.parent / f"server-{port}.log"
    full_env = {
        **os.environ,
        "XSERVE_MODELS_DIR": str(models_dir),
        "XSERVE_POLL_INTERVAL": str(poll),
    }
    # Each server its own audit log beside its models, never ./audit in the repository.
    full_env["XSERVE_AUDIT_URL"] = f"sqlite:///{models_dir.parent / f'audit-{port}' / 'audit.db'}"
    full_env.update(env or {})
    cmd = [
        sys.executable,
        "-m",
        "xserve.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(models_dir, port, proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"xserve exited early:\n{log.read_text()}")
            try:
                if httpx.get(f"{server.url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"xserve did not become ready:\n{log.read_text()}")
            time.sleep(0.1)
        yield server
    finally:
        stop(proc, timeout=10)
