"""Helpers for the job and cache tests: the real Redis, and real ``xserve worker`` processes.

Redis must run at 127.0.0.1:6379 (the tests fail, not skip, without it). Each
test module has its own database number, flushed per test, and its own Celery
queue name, so they never see each other's keys.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.server import free_port, stop

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
# Database numbers of this suite's modules (others' tests use other numbers or none).
CACHE_DB = 12
JOBS_DB = 13
HTTP_DB = 14
LIMITS_DB = 9
WORKER_DB = 8


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def flushed_redis(db: int) -> redis.Redis:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_connect_timeout=2)
    client.ping()  # no Redis is a failure here, never a skip
    client.flushdb()
    return client


def closed_port() -> int:
    """A loopback port nothing listens on: "Redis down" without stopping the real one."""
    return free_port()


@contextmanager
def running_worker(
    env: dict[str, str], log: Path, concurrency: int = 1, celery_options: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``xserve worker`` (Celery, prefork) with ``env``, given Celery's own
    ``celery_options`` too; ready when it says so."""
    cmd = [
        sys.executable,
        "-m",
        "xserve.cli",
        "worker",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "info",
        *celery_options,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 180  # a busy machine: preloading alone takes a while
        while b" ready." not in log.read_bytes():
            if proc.poll() is not None:
                raise RuntimeError(f"xserve worker exited early:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"xserve worker did not become ready:\n{log.read_text()}")
            time.sleep(0.1)
        yield proc
    finally:
        stop(proc, timeout=15)


def worker_env(models_dir: Path, cache_url: str, db: int, queue: str) -> dict[str, str]:
    return {
        "XSERVE_BROKER_URL": redis_url(db),
        "XSERVE_JOB_QUEUE": queue,
        "XSERVE_MODELS_DIR": str(models_dir),
        "XSERVE_CACHE_URL": cache_url,
        # Workers record the decisions of the jobs they finish: in the server's own log.
        "XSERVE_AUDIT_URL": f"sqlite:///{models_dir.parent / 'audit' / 'audit.db'}",
    }
