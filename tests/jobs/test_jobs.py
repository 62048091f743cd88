"""One suite for every job queue: the in-process pool, and Celery with a real ``xserve worker``
process on the real Redis."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from tests.jobs_support import (
    JOBS_DB,
    closed_port,
    flushed_redis,
    running_worker,
    worker_env,
)
from tests.server import DEMO_MODELS, copy_demo_models
from xserve.errors import JobNotFound, JobQueueUnavailable
from xserve.jobs import open_queue
from xserve.jobs.base import JobQueue, JobSpec, JobStatus, encode_rows
from xserve.repository.version import ModelVersion, load_version
from xserve.settings import Settings

ORDER = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2}


@cache
def demo(name: str) -> ModelVersion:
    return load_version(name, "1", DEMO_MODELS / name / "1")


@pytest.fixture(scope="module", params=["in-process", "celery"])
def settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """A server's settings for each backend (with a real worker process for Celery)."""
    root = tmp_path_factory.mktemp(f"jobs-{request.param}")
    models = copy_demo_models(root / "models")
    cache_url = str(root / "cache")
    if request.param == "in-process":
        yield Settings(models_dir=models, cache_url=cache_url, job_workers=1)
        return
    flushed_redis(JOBS_DB)
    env = worker_env(models, cache_url, JOBS_DB, f"test-jobs-{os.getpid()}")
    with running_worker(env, root / "worker.log"):
        yield Settings(
            models_dir=models,
            cache_url=cache_url,
            broker_url=env["XSERVE_BROKER_URL"],
            job_queue=env["XSERVE_JOB_QUEUE"],
        )


@pytest.fixture(scope="module")
def queue(settings: Settings) -> Iterator[JobQueue]:
    q = open_queue(settings)
    yield q
    q.close()


def spec(name: str, rows: np.ndarray, **params: object) -> JobSpec:
    model = demo(name)
    return JobSpec(
        model=name,
        version="1",
        digest=model.digest,
        method="kernel_shap",
        params={"nsamples": 60, "background": 5, **params},
        rows=encode_rows(rows),
    )


def follow(queue: JobQueue, job_id: str, timeout: float = 90) -> list[JobStatus]:
    """Every state seen until the job finished."""
    seen = [queue.status(job_id)]
    deadline = time.monotonic() + timeout
    while not seen[-1].finished:
        assert time.monotonic() < deadline, f"job still {seen[-1].status} after {timeout}s"
        time.sleep(0.02)
        seen.append(queue.status(job_id))
    return seen


def test_a_job_runs_fills_the_cache_and_reports_its_states(queue: JobQueue) -> None:
    model = demo("iris")
    assert model.background is not None
    rows = model.background[[0, 60, 120]]
    job_id = queue.submit(spec("iris", rows, seed=11))
    seen = follow(queue, job_id)
    states = [s.status for s in seen]
    assert states[0] in ("queued", "running") and states[-1] == "succeeded"
    assert [ORDER[s] for s in states] == sorted(ORDER[s] for s in states)  # never backwards
    result = seen[-1].result
    assert result is not None and result["model"] == "iris" and result["cached"] == [False] * 3
    probabilities = model.runtime.predict(rows)
    for i, e in enumerate(result["explanations"]):
        k = int(np.argmax(probabilities[i]))
        assert e["method"] == "kernel_shap" and e["class"] == model.classes[k]
        assert e["base_value"] + sum(e["values"].values()) == pytest.approx(
            probabilities[i, k], rel=1e-5
        )
    again = queue.wait(queue.submit(spec("iris", rows, seed=11)), 60)
    assert again.status == "succeeded" and again.result is not None
    assert again.result["cached"] == [True] * 3
    assert again.result["explanations"] == result["explanations"]


def test_a_failing_job_carries_its_error_and_the_worker_lives_on(queue: JobQueue) -> None:
    model = demo("iris")
    assert model.background is not None
    first = queue.wait(queue.submit(spec("iris", model.background[:1], seed=12)), 60)
    assert first.status == "succeeded" and first.result is not None
    bad = queue.wait(queue.submit(spec("iris", np.ones((1, 2)), seed=12)), 60)  # 2 of 4 features
    assert bad.status == "failed" and bad.result is None
    assert bad.error is not None and "kernel_shap failed on instances[0]" in bad.error
    assert "INVALID_ARGUMENT" in bad.error  # onnxruntime's own words
    after = queue.wait(queue.submit(spec("iris", model.background[1:2], seed=12)), 60)
    assert after.status == "succeeded" and after.result is not None
    assert "worker_pid" not in after.result and "inputs" not in after.result  # answers only


def test_a_job_whose_worker_is_killed_is_delivered_again_and_finishes(queue: JobQueue) -> None:
    model = demo("breast-cancer")  # 30 features: about 0.15 s a row at these settings
    assert model.background is not None
    job_id = queue.submit(
        spec("breast-cancer", model.background[:24], nsamples=2000, background=20)
    )
    deadline = time.monotonic() + 60
    state = queue.status(job_id)
    while state.status != "running" or state.worker_pid is None:
        assert not state.finished and time.monotonic() < deadline, state
        time.sleep(0.02)
        state = queue.status(job_id)
    killed = state.worker_pid
    time.sleep(0.5)
    os.kill(killed, signal.SIGKILL)
    final = queue.wait(job_id, 120)
    assert final.status == "succeeded", final.error
    assert final.result is not None and len(final.result["explanations"]) == 24


def test_another_server_process_sees_the_job(queue: JobQueue, settings: Settings) -> None:
    model = demo("iris")
    assert model.background is not None
    job_id = queue.submit(spec("iris", model.background[:1], seed=13))
    other = open_queue(settings)  # what a second `xserve serve` worker process opens
    try:
        assert type(other) is type(queue)
        assert other.status(job_id).status in ("queued", "running", "succeeded")
        assert other.wait(job_id, 60).status == "succeeded"
    finally:
        other.close()


@pytest.mark.parametrize("job_id", ["f" * 32, "../../etc/passwd", ""])
def test_unknown_jobs_are_not_found(queue: JobQueue, job_id: str) -> None:
    with pytest.raises(JobNotFound):
        queue.status(job_id)


def test_celery_with_redis_down_is_unavailable_quickly() -> None:
    settings = Settings(broker_url=f"redis://127.0.0.1:{closed_port()}/0")
    down = open_queue(settings)
    model = demo("iris")
    assert model.background is not None
    started = time.monotonic()
    with pytest.raises(JobQueueUnavailable, match="job queue is unavailable: cannot reach Redis"):
        down.submit(spec("iris", model.background[:1]))
    with pytest.raises(JobQueueUnavailable):
        down.status("a" * 32)
    assert time.monotonic() - started < 10
    down.close()


def test_celery_time_limit_fails_the_job_and_the_worker_goes_on(tmp_path: Path) -> None:
    flushed_redis(JOBS_DB)
    models = copy_demo_models(tmp_path / "models")
    env = worker_env(models, str(tmp_path / "cache"), JOBS_DB, f"test-limits-{os.getpid()}")
    env |= {"XSERVE_JOB_SOFT_TIME_LIMIT": "2", "XSERVE_JOB_TIME_LIMIT": "30"}
    model = demo("breast-cancer")
    assert model.background is not None
    with running_worker(env, tmp_path / "worker.log"):
        q = open_queue(
            Settings(broker_url=env["XSERVE_BROKER_URL"], job_queue=env["XSERVE_JOB_QUEUE"])
        )
        try:
            slow = spec("breast-cancer", model.background[:40], nsamples=2000, background=20)
            late = q.wait(q.submit(slow), 60)
            assert late.status == "failed"
            assert late.error == "job failed: it ran past its time limit of 2 s"
            quick = q.wait(q.submit(spec("iris", demo("iris").background[:1])), 60)  # type: ignore[index]
            assert quick.status == "succeeded"
        finally:
            q.close()


def test_the_submitter_is_stored_with_the_job_through_every_state(
    queue: JobQueue, settings: Settings
) -> None:
    """Stored by the queue at submit and kept as the job's state is rewritten (running,
    succeeded, failed), for every server process; None for a job submitted without keys."""
    model = demo("iris")
    assert model.background is not None
    alices = spec("iris", model.background[[2, 62]], seed=13).model_copy(update={"caller": "alice"})
    job_id = queue.submit(alices)
    seen = follow(queue, job_id)
    assert seen[-1].status == "succeeded"
    assert [s.submitter for s in seen] == ["alice"] * len(seen)
    other = open_queue(settings)  # another server process sharing the jobs
    try:
        assert other.status(job_id).submitter == "alice"
    finally:
        other.close()
    bad = spec("iris", np.ones((1, 2)), seed=13).model_copy(update={"caller": "bob"})
    failed = queue.wait(queue.submit(bad), 60)
    assert failed.status == "failed" and failed.submitter == "bob"
    anonymous = queue.wait(queue.submit(spec("iris", model.background[[2]], seed=13)), 60)
    assert anonymous.status == "succeeded" and anonymous.submitter is None
    from xserve.jobs.celery_queue import CeleryQueue

    if isinstance(queue, CeleryQueue):  # the marker outlives the result stored as it ended
        left = queue.markers.client.ttl(f"xserve:job:{job_id}")
        assert left > settings.job_result_ttl, left
