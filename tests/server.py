"""A real ``xserve serve`` process on a free loopback port, for HTTP tests, and the demo
models the tests serve."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]

DEMOS = {"breast-cancer": "1", "credit-risk": "1", "diabetes": "1", "iris": "1"}
"""The demo models the tests use and the version folder of each, under ``models/``."""

_SOURCE = REPO / "models"
_PRISTINE = "XSERVE_TESTS_DEMO_MODELS"
"""Names the copy below to processes started by the tests (spawned ones reuse it)."""


def copy_demo_models(target: Path, names: Iterable[str] = DEMOS) -> Path:
    """A model repository at ``target`` holding the demo versions ``names`` and nothing
    else: only the files each manifest names, so whatever a user added under ``models/``
    (another version, a ``deployment.yaml``, a stray file) never reaches a test."""
    for name in names:
        version = DEMOS[name]
        source, folder = _SOURCE / name / version, target / name / version
        folder.mkdir(parents=True)
        manifest = yaml.safe_load((source / "xserve.yaml").read_text())
        for file in ("xserve.yaml", manifest["artifact"], manifest.get("background")):
            if file is not None:
                shutil.copy2(source / file, folder / file)
    return target


def _pristine_demo_models() -> Path:
    """One copy of the demo models per test session, never the working tree's ``models/``.

    Made when this module is first imported (module-level names of test modules use it);
    processes the tests spawn inherit its path and read the same copy. Tests only read it:
    a test that changes a repository makes its own with :func:`copy_demo_models`."""
    known = os.environ.get(_PRISTINE)
    if known and Path(known).is_dir():
        return Path(known)
    root = Path(tempfile.mkdtemp(prefix="xserve-tests-"))
    creator = os.getpid()

    def remove() -> None:
        if os.getpid() == creator:  # not in a forked child that exits normally
            shutil.rmtree(root, ignore_errors=True)

    atexit.register(remove)
    models = copy_demo_models(root / "models")
    os.environ[_PRISTINE] = str(models)
    return models


DEMO_MODELS = _pristine_demo_models()
"""A read-only model repository of the demo models (see :data:`DEMOS`)."""


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Ask a process to stop; kill it if it has not within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve_command(port: int, workers: int = 1) -> list[str]:
    """``xserve serve`` on loopback ``port``, quiet."""
    options = f"--host 127.0.0.1 --port {port} --workers {workers} --log-level warning"
    return [sys.executable, "-m", "xserve.cli", "serve", *options.split()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        # no gRPC unless a test asks for it: 8081 may be taken on the host
        "XSERVE_GRPC_PORT": "0",
    }
    # Each server its own audit log beside its models; the working directory is theirs
    # too, so no default relative path can reach the repository's working tree.
    full_env["XSERVE_AUDIT_URL"] = f"sqlite:///{models_dir.parent / f'audit-{port}' / 'audit.db'}"
    full_env.update(env or {})
    cmd = serve_command(port, workers)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=full_env, cwd=models_dir.parent, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(models_dir, port, proc, log)
    try:
        deadline = time.monotonic() + 180  # a cold numba cache compiles every kernel first
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
