"""Explanation jobs and their cache: two figures, for each job backend.

1. **Cache-hit latency** of ``POST /v1/models/credit-risk/explain`` (KernelSHAP, one
   instance already in the cache): the server-side time from the handler's
   ``Server-Timing: app;dur=`` header (decoding, the cache read, rendering, the
   decision-log record) and the client-side round trip, p50 and p95 over
   sequential requests on one keep-alive connection. Target: server-side p50 < 2 ms.
   Measured with the audit log on (SQLite, the default: every answer is a durable
   record first) and off (``XSERVE_AUDIT_URL=none``), for the disk cache
   (in-process backend) and the Redis cache (Celery backend).
2. **KernelSHAP job wall time**: ``POST .../explain?wait=120`` for rows not yet
   cached, from request to answer, against the same shap call made directly in
   this process (``shap.KernelExplainer`` over the same k-means background, the
   same ``nsamples``, ``l1_reg`` and per-row seed, the model loaded the same way,
   native threads pinned to ``XSERVE_JOB_THREADS`` like the workers). Both sides
   are warm: the worker has the model and the explainer loaded, the direct side
   has its explainer built; each repetition explains fresh rows. Target: at most
   1.2x the direct time plus 50 ms.

Needs Redis at 127.0.0.1:6379 (database 10 is flushed) for the Celery backend.

    .venv/bin/python bench/explain_jobs.py [--hits 400] [--reps 5] [--rows 8]

Results: a table on stdout and ``bench/results/explain_jobs.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_vs_fastapi import free_port, stop

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
MODEL = "credit-risk"
RESULTS = REPO / "bench" / "results" / "explain_jobs.json"
REDIS = "redis://127.0.0.1:6379/10"
PARAMS = {"nsamples": 512, "background": 50, "seed": 0}


def wait_for(check: Any, what: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{log.read_text()}")
        time.sleep(0.1)


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        stop(proc, timeout=20)


@contextlib.contextmanager
def backend(name: str, root: Path, audit: bool) -> Iterator[str]:
    """A server (and for Celery a worker) on the demo models; yields its base URL."""
    import httpx

    env = {
        "XSERVE_MODELS_DIR": str(MODELS),
        "XSERVE_AUDIT_URL": f"sqlite:///{root / 'audit.db'}" if audit else "none",
        "XSERVE_JOB_WORKERS": "1",
    }
    if name == "celery":
        import redis

        redis.Redis.from_url(REDIS).flushdb()
        env |= {
            "XSERVE_BROKER_URL": REDIS,
            "XSERVE_CACHE_URL": REDIS,
            "XSERVE_JOB_QUEUE": f"bench-{os.getpid()}",
        }
    else:
        env["XSERVE_CACHE_URL"] = str(root / "cache")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = [
        sys.executable,
        "-m",
        "xserve.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with contextlib.ExitStack() as stack:
        if name == "celery":
            wlog = root / "worker.log"
            stack.enter_context(
                process(
                    [sys.executable, "-m", "xserve.cli", "worker", "--concurrency", "1"], env, wlog
                )
            )
            wait_for(lambda: b" ready." in wlog.read_bytes(), "xserve worker", wlog)
        slog = root / "server.log"
        stack.enter_context(process(serve, env, slog))

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, "xserve serve", slog)
        yield url


def background_rows() -> list[list[float]]:
    import pandas as pd

    return pd.read_csv(MODELS / MODEL / "1" / "background.csv").values.tolist()  # type: ignore[no-any-return]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cache_hits(url: str, rows: list[list[float]], n: int) -> dict[str, float]:
    import httpx

    body = {"instances": [rows[0]], "method": "kernel_shap", "params": PARAMS}
    path = f"/v1/models/{MODEL}/explain"
    with httpx.Client(base_url=url, timeout=120) as c:
        first = c.post(f"{path}?wait=120", json=body)
        assert first.status_code == 200, first.text
        server, client = [], []
        for i in range(n + 20):
            started = time.perf_counter()
            r = c.post(path, json=body)
            elapsed = (time.perf_counter() - started) * 1000
            assert r.status_code == 200 and r.json()["cached"] == [True], r.text
            if i >= 20:  # warm-up
                server.append(float(r.headers["server-timing"].split("dur=")[1]))
                client.append(elapsed)
    return {
        "server_p50_ms": percentile(server, 0.5),
        "server_p95_ms": percentile(server, 0.95),
        "client_p50_ms": percentile(client, 0.5),
        "client_p95_ms": percentile(client, 0.95),
        "requests": n,
    }


class Direct:
    """The same KernelSHAP computation, made directly with shap in this process."""

    def __init__(self, threads: int) -> None:
        import shap

        from xserve.repository.version import load_version

        model = load_version(MODEL, "1", MODELS / MODEL / "1", threads=threads)
        assert model.background is not None
        background = shap.kmeans(model.background, PARAMS["background"])
        self.explainer = shap.KernelExplainer(model.runtime.predict, background)
        self.seconds(model.background[:1].tolist())  # warm, as the worker is

    def seconds(self, rows: list[list[float]]) -> float:
        import numpy as np

        started = time.perf_counter()
        for row in np.asarray(rows, dtype=np.float64):
            np.random.seed(PARAMS["seed"])
            self.explainer.shap_values(
                row[None, :], nsamples=PARAMS["nsamples"], l1_reg=False, silent=True
            )
        return time.perf_counter() - started


def job_seconds(url: str, rows: list[list[float]]) -> float:
    import httpx

    body = {"instances": rows, "method": "kernel_shap", "params": PARAMS}
    with httpx.Client(base_url=url, timeout=300) as c:
        started = time.perf_counter()
        r = c.post(f"/v1/models/{MODEL}/explain?wait=120", json=body)
        elapsed = time.perf_counter() - started
    assert r.status_code == 200 and not any(r.json()["cached"]), r.text
    return elapsed


def jobs_against_direct(
    url: str, direct: Direct, chunks: list[list[list[float]]]
) -> dict[str, Any]:
    """Each repetition's rows explained both ways, alternating which goes first, so that
    load from elsewhere on the machine falls on both alike."""
    job_seconds(url, chunks[0])  # warm: the worker loads the model and builds the explainer
    jobs, directs = [], []
    for i, chunk in enumerate(chunks[1:]):
        if i % 2:
            jobs.append(job_seconds(url, chunk))
            directs.append(direct.seconds(chunk))
        else:
            directs.append(direct.seconds(chunk))
            jobs.append(job_seconds(url, chunk))
    d, j = statistics.median(directs), statistics.median(jobs)
    return {
        "job_s": jobs,
        "direct_s": directs,
        "median_job_s": j,
        "median_direct_s": d,
        "ratio": j / d,
        "overhead_ms": (j - d) * 1000,
        "target_met": j <= 1.2 * d + 0.05,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hits", type=int, default=400, help="cache-hit requests per run")
    parser.add_argument("--reps", type=int, default=7, help="job repetitions per backend")
    parser.add_argument("--rows", type=int, default=8, help="rows per job")
    args = parser.parse_args()
    os.environ.setdefault("XSERVE_JOB_THREADS", "1")
    threads = int(os.environ["XSERVE_JOB_THREADS"])
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)  # the direct side gets what each worker gets
    rows = background_rows()
    chunks = [rows[1 + i * args.rows : 1 + (i + 1) * args.rows] for i in range(args.reps + 1)]
    results: dict[str, Any] = {"params": PARAMS, "rows_per_job": args.rows, "threads": threads}
    direct = Direct(threads)
    for name in ("in-process", "celery"):
        for audit in (True, False):
            root = Path(tempfile.mkdtemp(prefix="xserve-bench-"))
            try:
                with backend(name, root, audit) as url:
                    results[f"{name}/hits/audit-{'on' if audit else 'off'}"] = cache_hits(
                        url, rows, args.hits
                    )
                    if audit:
                        results[f"{name}/job"] = jobs_against_direct(url, direct, chunks)
            finally:
                shutil.rmtree(root, ignore_errors=True)
    results["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    report(results)


def report(results: dict[str, Any]) -> None:
    print(f"KernelSHAP {results['params']}, {results['rows_per_job']} rows per job")
    print(f"{'cache hit':<32}{'server p50':>11}{'p95':>8}{'client p50':>12}{'p95':>8}  (ms)")
    for key, r in results.items():
        if "/hits/" in key:
            print(
                f"{key:<32}{r['server_p50_ms']:>11.3f}{r['server_p95_ms']:>8.3f}"
                f"{r['client_p50_ms']:>12.3f}{r['client_p95_ms']:>8.3f}"
            )
    print(f"{'job wall time':<32}{'job':>11}{'direct':>8}{'ratio':>12}{'+ms':>8}  (s, median)")
    for key, r in results.items():
        if key.endswith("/job"):
            print(
                f"{key:<32}{r['median_job_s']:>11.3f}{r['median_direct_s']:>8.3f}"
                f"{r['ratio']:>12.3f}{r['overhead_ms']:>8.1f}  target met: {r['target_met']}"
            )


if __name__ == "__main__":
    main()
