"""Bounded explanation jobs, against real servers: queued or running jobs per caller and
overall (429 ``too_many_jobs`` with ``Retry-After``), a job's size (413), for the in-process
pool (counted in the jobs folder server processes share) and for Celery (a real worker on
Redis). Cached explanations and inline methods are never refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.jobs_support import LIMITS_DB, flushed_redis, redis_url, running_worker, worker_env
from tests.server import DEMO_MODELS, copy_demo_models, running_server
from xserve.errors import PayloadTooLarge, TooManyJobs
from xserve.jobs.active_files import ActiveFiles
from xserve.jobs.limits import check_job_size
from xserve.jobs.redis_jobs import RedisJobs
from xserve.security.keys import add_key

pytestmark = pytest.mark.http

PER_CALLER = 2
TOTAL = 3
MAX_WORK = 200_000


@dataclass
class Setup:
    url: str
    keys: dict[str, str]

    def client(self, who: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[who]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture(scope="module", params=["in-process", "celery"])
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp(f"limits-{request.param}")
    models = copy_demo_models(root / "models", ["breast-cancer", "iris"])
    keys_file = root / "keys.txt"
    keys = {who: add_key(keys_file, who, "explain,predict") for who in ("alice", "bob")}
    env = {
        "XSERVE_API_KEYS": str(keys_file),
        "XSERVE_CACHE_URL": str(root / "cache"),
        "XSERVE_JOBS_MAX_QUEUED": str(TOTAL),
        "XSERVE_JOBS_MAX_QUEUED_PER_CALLER": str(PER_CALLER),
        "XSERVE_JOB_MAX_WORK": str(MAX_WORK),
    }
    if request.param == "in-process":
        with running_server(models, env={**env, "XSERVE_JOB_WORKERS": "1"}) as srv:
            yield Setup(srv.url, keys)
        return
    flushed_redis(LIMITS_DB)
    env |= worker_env(models, env["XSERVE_CACHE_URL"], LIMITS_DB, f"test-limits-{os.getpid()}")
    with running_worker(env, root / "worker.log"), running_server(models, env=env) as srv:
        yield Setup(srv.url, keys)


def rows(name: str, idx: list[int]) -> list[list[float]]:
    frame = pd.read_csv(DEMO_MODELS / name / "1" / "background.csv").iloc[idx]
    return frame.values.tolist()  # type: ignore[no-any-return]


def slow_job(seed: int) -> dict[str, Any]:
    """Seconds of work on one job process (30 features; a new seed misses the cache)."""
    return {
        "instances": rows("breast-cancer", list(range(8))),
        "method": "kernel_shap",
        "params": {"nsamples": 2000, "background": 20, "seed": seed},
    }


QUICK = {"instances": rows("iris", [3]), "method": "kernel_shap", "params": {"nsamples": 60}}


def finish(c: httpx.Client, job_ids: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    for job_id in job_ids:
        while c.get(f"/v1/jobs/{job_id}").json()["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, f"job {job_id} did not finish"
            time.sleep(0.1)


def test_jobs_are_bounded_per_caller_and_overall_and_freed_as_they_end(setup: Setup) -> None:
    seed = int(time.time())  # a fresh module run never hits the cache
    with setup.client("alice") as alice, setup.client("bob") as bob:
        cached = alice.post("/v1/models/iris/explain?wait=60", json=QUICK)
        assert cached.status_code == 200, cached.text  # filled the cache for later
        mine = [
            alice.post("/v1/models/breast-cancer/explain", json=slow_job(seed + i)) for i in (1, 2)
        ]
        assert [r.status_code for r in mine] == [202, 202], [r.text for r in mine]
        third = alice.post("/v1/models/breast-cancer/explain", json=slow_job(seed + 3))
        assert third.status_code == 429, third.text
        assert third.json()["code"] == "too_many_jobs" and int(third.headers["retry-after"]) > 0
        assert "'alice'" in third.json()["error"]
        assert f"XSERVE_JOBS_MAX_QUEUED_PER_CALLER={PER_CALLER}" in third.json()["error"]
        bobs = bob.post("/v1/models/breast-cancer/explain", json=slow_job(seed + 4))
        assert bobs.status_code == 202, bobs.text  # another caller's share
        over = bob.post("/v1/models/breast-cancer/explain", json=slow_job(seed + 5))
        assert over.status_code == 429 and over.json()["code"] == "too_many_jobs", over.text
        assert f"XSERVE_JOBS_MAX_QUEUED={TOTAL}" in over.json()["error"]
        # Never refused: what needs no job.
        again = alice.post("/v1/models/iris/explain", json=QUICK)
        assert again.status_code == 200 and again.json()["cached"] == [True], again.text
        inline = bob.post(
            "/v1/models/breast-cancer/explain",
            json={"instances": rows("breast-cancer", [0]), "method": "tree_shap"},
        )
        assert inline.status_code == 200, inline.text
        assert bob.post("/v1/models/iris/predict", json={"instances": rows("iris", [1])}).is_success
        # Every job that ends frees its place.
        finish(alice, [r.json()["job_id"] for r in mine])
        finish(bob, [bobs.json()["job_id"]])
        quick = {**QUICK, "params": {"nsamples": 60, "seed": seed}}
        later = alice.post("/v1/models/iris/explain?wait=60", json=quick)
        assert later.status_code == 200, later.text


def test_a_job_larger_than_the_work_bound_is_413_naming_rows_samples_and_limit(
    setup: Setup,
) -> None:
    big = {
        "instances": rows("breast-cancer", list(range(101))),
        "method": "kernel_shap",
        "params": {"nsamples": 2000},
    }
    with setup.client("alice") as alice:
        r = alice.post("/v1/models/breast-cancer/explain", json=big)
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert r.json()["code"] == "payload_too_large"
        assert "101 rows x 2000 model evaluations per row (kernel_shap nsamples)" in error
        assert f"{101 * 2000:,} > {MAX_WORK:,} (XSERVE_JOB_MAX_WORK)" in error
        lime = {**big, "method": "lime", "params": {"num_samples": 5000}}
        assert alice.post("/v1/models/breast-cancer/explain", json=lime).status_code == 413


def test_job_size_counts_each_methods_samples() -> None:
    check_job_size("kernel_shap", {"nsamples": 100}, 10, 4, 1000)  # exactly at the bound
    with pytest.raises(PayloadTooLarge, match=r"2 rows x 2056 .*nsamples \(auto\)"):
        check_job_size("kernel_shap", {"nsamples": "auto"}, 2, 4, 4000)
    with pytest.raises(PayloadTooLarge, match="lime num_samples"):
        check_job_size("lime", {"num_samples": 5000}, 3, 4, 10_000)
    with pytest.raises(PayloadTooLarge, match="anchors"):
        check_job_size("anchors", {"coverage_samples": 10_000, "batch_size": 100}, 1, 4, 10_000)


# -- what a dead server or worker leaves behind stops counting ---------------------------


def test_redis_leases_of_jobs_whose_worker_vanished_run_out() -> None:
    flushed_redis(LIMITS_DB)
    jobs = RedisJobs(
        redis_url(LIMITS_DB), 60, "lease-test", lease=0.5, max_total=2, max_per_caller=1
    )
    jobs.admit("a" * 32, "carol")
    with pytest.raises(TooManyJobs, match="'carol'"):
        jobs.admit("b" * 32, "carol")
    jobs.admit("c" * 32, None)  # no caller: only the overall bound
    with pytest.raises(TooManyJobs, match="XSERVE_JOBS_MAX_QUEUED=2"):
        jobs.admit("d" * 32, "dave")
    assert jobs.active() == 2 and jobs.active("carol") == 1
    jobs.finished("c" * 32, None)
    jobs.admit("d" * 32, "dave")
    time.sleep(0.6)  # nobody ended "a" or "d": their leases ran out
    assert jobs.active() == 0
    jobs.admit("b" * 32, "carol")
    assert jobs.active("carol") == 1


def test_markers_count_over_server_processes_and_not_once_theirs_died(tmp_path: Path) -> None:
    """Another server process sharing the folder (``--workers N``): its jobs count while
    it lives; once it died, they are removed as they are seen."""
    root = tmp_path / "active"
    code = (
        "import sys; from pathlib import Path; from xserve.jobs.active_files import ActiveFiles;"
        f"ActiveFiles(Path({str(root)!r}), 2, 1, 3600).admit('e' * 32, 'erin');"
        "print('admitted', flush=True); sys.stdin.read()"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert other.stdout is not None and other.stdin is not None
    assert other.stdout.readline() == b"admitted\n"
    active = ActiveFiles(root, max_total=2, max_per_caller=1, lease=3600)
    assert active.count() == 1 and active.count("erin") == 1
    with pytest.raises(TooManyJobs, match="'erin'"):
        active.admit("f" * 32, "erin")
    other.stdin.close()
    assert other.wait(timeout=60) == 0
    assert len(list(root.iterdir())) == 2  # the lock and the dead process's marker
    assert active.count() == 0  # its process is gone: removed as it was seen
    active.admit("f" * 32, "erin")
    with pytest.raises(TooManyJobs, match="'erin'"):
        active.admit("g" * 32, "erin")
    active.release("f" * 32, "erin")
    active.admit("g" * 32, "erin")
    assert active.count("erin") == 1 and oct(root.stat().st_mode & 0o777) == "0o700"
