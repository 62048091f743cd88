"""The Celery worker as Celery users run it, against a real ``xserve worker`` on the real
Redis: Celery's own CLI finds the app (``celery -A xserve.jobs.celery_app inspect ping``),
the worker takes Celery's options, and no input row ever shows in ``celery inspect``, in
Redis once the job ended, or in the worker's log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.jobs_support import WORKER_DB, flushed_redis, running_worker, worker_env
from tests.server import DEMO_MODELS, copy_demo_models
from xserve.jobs.base import JobSpec, encode_rows
from xserve.jobs.celery_queue import CeleryQueue
from xserve.repository.version import load_version
from xserve.settings import Settings

APP = "xserve.jobs.celery_app"
NODE = f"xserve@{socket.gethostname()}"  # the worker's default name
SECRET = 987.654321  # a value no demo row holds: found anywhere, it leaked


@dataclass
class Worker:
    env: dict[str, str]
    log: Path
    queue: CeleryQueue
    extra_queue: str


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    root = tmp_path_factory.mktemp("celery-worker")
    models = copy_demo_models(root / "models", ["breast-cancer"])
    flushed_redis(WORKER_DB)
    env = worker_env(models, str(root / "cache"), WORKER_DB, f"test-worker-{os.getpid()}")
    extra = f"{env['XSERVE_JOB_QUEUE']}-extra"
    # Celery's own worker options, through `xserve worker`.
    options = ["-E", "--max-tasks-per-child=7", "-Q", f"{env['XSERVE_JOB_QUEUE']},{extra}"]
    log = root / "worker.log"
    with running_worker(env, log, celery_options=options):
        settings = Settings(
            broker_url=env["XSERVE_BROKER_URL"],
            job_queue=env["XSERVE_JOB_QUEUE"],
            models_dir=models,
        )
        queue = CeleryQueue(settings)
        try:
            yield Worker(env, log, queue, extra)
        finally:
            queue.close()


def celery(worker: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    """Celery's own command line, finding xserve's app by ``-A`` alone."""
    cmd = [sys.executable, "-m", "celery", "-A", APP, *args]
    env = {**os.environ, **worker.env}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)


def inspect(worker: Worker, what: str) -> Any:
    done = celery(worker, "inspect", what, "-d", NODE, "--timeout", "10", "-j")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_celery_inspect_ping_finds_the_app_and_the_worker(worker: Worker) -> None:
    done = celery(worker, "inspect", "ping", "-d", NODE, "--timeout", "10")
    assert done.returncode == 0, done.stderr
    assert f"{NODE}: OK" in done.stdout and "pong" in done.stdout
    status = celery(worker, "status", "--timeout", "10")
    assert status.returncode == 0 and "1 node online" in status.stdout, status.stderr
    nobody = celery(worker, "inspect", "ping", "-d", "nobody@nowhere", "--timeout", "1")
    assert nobody.returncode != 0  # what a probe sees of a worker that does not answer


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def probes() -> list[str]:
    """The worker's probe commands in deploy/k8s/worker.yaml and its compose healthcheck."""
    worker = yaml.safe_load((DEPLOY / "k8s" / "worker.yaml").read_text())
    (c,) = worker["spec"]["template"]["spec"]["containers"]
    commands = [c[probe]["exec"]["command"][2] for probe in ("readinessProbe", "livenessProbe")]
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    compose = services["worker"]["healthcheck"]["test"][1].replace("$$", "$")  # compose's escape
    return [*commands, compose]


def test_the_deployed_probes_pass_against_a_real_worker(worker: Worker) -> None:
    bin_dir = str(Path(sys.executable).parent)  # `celery` as the image installs it
    env = {**os.environ, **worker.env, "HOSTNAME": socket.gethostname()}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    for command in probes():
        done = subprocess.run(
            ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and "pong" in done.stdout, (command, done.stderr)
    gone = {**env, "HOSTNAME": "not-this-host"}  # another worker's name: no answer, failure
    failed = subprocess.run(["sh", "-c", probes()[0]], env=gone, capture_output=True, timeout=60)
    assert failed.returncode != 0


def test_the_app_needs_the_broker_setting() -> None:
    env = {k: v for k, v in os.environ.items() if k != "XSERVE_BROKER_URL"}
    cmd = [sys.executable, "-m", "celery", "-A", APP, "inspect", "ping"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "XSERVE_BROKER_URL" in done.stderr


def test_the_worker_takes_celerys_own_options(worker: Worker) -> None:
    stats = inspect(worker, "stats")[NODE]
    assert stats["pool"]["max-tasks-per-child"] == 7
    queues = {q["name"] for q in inspect(worker, "active_queues")[NODE]}
    assert queues == {worker.env["XSERVE_JOB_QUEUE"], worker.extra_queue}


def secret_spec(rows: int = 8) -> JobSpec:
    name = "breast-cancer"
    model = load_version(name, "1", DEMO_MODELS / name / "1")
    assert model.background is not None
    x = model.background[:rows].copy()
    x[:, 0] = SECRET
    return JobSpec(
        model=name,
        version="1",
        digest=model.digest,
        method="kernel_shap",
        params={"nsamples": 2000, "background": 20, "seed": int(time.time())},
        rows=encode_rows(x),
        caller="alice",
        client_id="loan-application-77",
    )


def test_rows_never_show_in_inspect_in_redis_once_ended_or_in_the_worker_log(
    worker: Worker,
) -> None:
    queue = worker.queue
    job_id = queue.submit(secret_spec())
    waiting = queue.submit(secret_spec(2))  # behind it: reserved or still in the queue
    # While queued, the inputs wait in Redis under the job's id (not in the message).
    assert queue.markers.client.exists(f"xserve:job:{waiting}:spec") == 1
    deadline = time.monotonic() + 60
    while queue.status(job_id).status != "running":
        assert time.monotonic() < deadline, queue.status(job_id)
        time.sleep(0.05)
    seen = {what: inspect(worker, what) for what in ("active", "reserved", "scheduled")}
    (active,) = seen["active"][NODE]
    assert active["id"] == job_id and active["args"] == [] and active["kwargs"] == {}
    text = json.dumps(seen)
    assert str(SECRET) not in text and "loan-application-77" not in text
    for done_id, rows in ((job_id, 8), (waiting, 2)):
        final = queue.wait(done_id, 120)
        assert final.status == "succeeded", final.error
        assert final.result is not None and len(final.result["explanations"]) == rows
        assert final.result["id"] == "loan-application-77"
        assert queue.markers.client.exists(f"xserve:job:{done_id}:spec") == 0
    client = queue.markers.client
    for key in client.scan_iter():
        if client.type(key) == b"string":
            value = client.get(key)
            assert isinstance(value, bytes) and str(SECRET).encode() not in value, key
    assert queue.markers.active() == 0  # both ended: they count no more
    log = worker.log.read_text()
    assert str(SECRET) not in log
    (line,) = [ln for ln in log.splitlines() if f"[{job_id}] succeeded in" in ln]
    assert line.endswith(f"{{'job_id': '{job_id}', 'rows': 8}}")  # a summary, no answer


def test_a_revoked_job_leaves_no_inputs_and_counts_no_more(worker: Worker) -> None:
    queue = worker.queue
    first = queue.submit(secret_spec(4))
    second = queue.submit(secret_spec(2))
    assert queue.markers.active() == 2
    queue.app.control.revoke(second)  # what `celery control revoke <id>` sends
    assert queue.wait(first, 120).status == "succeeded"
    deadline = time.monotonic() + 60
    while queue.markers.active() or queue.markers.client.exists(f"xserve:job:{second}:spec"):
        assert time.monotonic() < deadline, "the revoked job's inputs or place were kept"
        time.sleep(0.1)
    revoked = queue.status(second)
    assert revoked.status == "failed" and revoked.error, revoked


def test_task_events_are_on_with_dash_e_and_carry_no_rows(worker: Worker) -> None:
    """`-E` passed through turns task events on (what Flower and `celery events` show);
    they name the job, never its rows."""
    queue = worker.queue
    seen: list[dict[str, Any]] = []
    listening = threading.Event()

    def listen() -> None:
        with queue.app.connection_for_read() as conn:
            receiver = queue.app.events.Receiver(conn, handlers={"*": seen.append})
            listening.set()
            for _ in receiver.itercapture(limit=None, timeout=30, wakeup=False):
                if any(e["type"] == "task-succeeded" for e in seen):
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert listening.wait(30)
    time.sleep(1)  # the receiver's queue is bound before the job is sent
    job_id = queue.submit(secret_spec(2))
    assert queue.wait(job_id, 120).status == "succeeded"
    thread.join(30)
    mine = [e for e in seen if e.get("uuid") == job_id]
    assert {"task-received", "task-started", "task-succeeded"} <= {e["type"] for e in mine}
    (received,) = [e for e in mine if e["type"] == "task-received"]
    assert received["args"] == "()" or received["args"] == "[]", received["args"]
    assert str(SECRET) not in json.dumps(mine, default=str)
    assert "loan-application-77" not in json.dumps(mine, default=str)
