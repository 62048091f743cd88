"""The default job queue: a bounded pool of worker processes beside the server.

Jobs run in separate processes (``spawn``: the server's threads and native
thread pools are not forked), so the API stays responsive while they run, at
most ``job_workers`` at a time; further jobs wait their turn. Each worker pins
its native thread pools to ``job_threads``.

Job state lives in files (:mod:`xserve.jobs.states`), written by the worker as
it starts and finishes, so every server process sharing ``jobs_dir`` can
answer for any job. A job belongs to the pool of the process that took it: if
that server process stops, its unfinished jobs stop with it (Celery keeps
them). A worker process that dies mid-job breaks the pool; the pool is
rebuilt and the job delivered again, up to ``job_max_deliveries`` times.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from xserve.errors import JobNotFound
from xserve.jobs.active_files import ActiveFiles
from xserve.jobs.base import JobQueue, JobSpec, JobStatus, describe_error, new_job_id
from xserve.jobs.states import JobStates
from xserve.monitoring.metrics import set_job_queue_depth
from xserve.settings import Settings
from xserve.threads import pin_env

__all__ = ["InProcessQueue", "default_workers", "execute", "jobs_dir"]

log = logging.getLogger(__name__)
_PRUNE_EVERY = 500


def jobs_dir(settings: Settings) -> Path:
    """Where job states live: beside the cache entries when the cache is a folder."""
    if settings.jobs_dir is not None:
        return settings.jobs_dir
    from xserve.cache import is_redis_url

    if is_redis_url(settings.cache_url):
        return Path("./explainer_jobs")
    return Path(settings.cache_url) / "jobs"  # the cache's entries are in two-letter folders


def default_workers() -> int:
    """All cores but one, which is left to the API (at least one worker)."""
    return max(1, (os.cpu_count() or 1) - 1)


def execute(
    job_id: str, spec: dict[str, Any], ctx: Any, jobs_dir: Path, delivery: int, marker: Path
) -> None:
    """Run one job in a pool worker, recording its state as it goes. The job's ``marker``
    (:class:`ActiveFiles`) goes before the final state is written: a caller who saw
    the job end may queue another at once."""
    from xserve.jobs.run import run_job

    states = JobStates(jobs_dir)
    common = {"delivery": delivery, "pid": os.getpid()}
    states.write(job_id, {"status": "running", "started": time.time(), **common})
    try:
        result = run_job(JobSpec.model_validate(spec), ctx, job_id)
    except Exception as exc:  # the job fails with its message; the worker lives on
        marker.unlink(missing_ok=True)
        states.write(job_id, {"status": "failed", "error": describe_error(exc), **common})
        return
    marker.unlink(missing_ok=True)
    states.write(job_id, {"status": "succeeded", "result": result, **common})


class InProcessQueue(JobQueue):
    backend = "in-process"

    def __init__(self, settings: Settings) -> None:
        from xserve.jobs.run import WorkerContext

        self.workers = settings.job_workers or default_workers()
        self.threads = settings.job_threads
        self.max_deliveries = settings.job_max_deliveries
        self.ttl = settings.job_result_ttl
        self.states = JobStates(jobs_dir(settings).resolve())
        # Counted over every server process sharing the folder (429 past the bounds).
        self.active = ActiveFiles(
            self.states.root / "active",
            settings.jobs_max_queued,
            settings.jobs_max_queued_per_caller,
            lease=settings.job_visibility_timeout + settings.job_time_limit,
        )
        self.context = WorkerContext.from_settings(settings)
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, Future[None]] = {}
        self._submitted = 0
        self._closing = False

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=pin_env,  # a light module: runs before numpy & co. load
                    initargs=(self.threads,),
                )
            return self._pool

    def _replace_broken(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)

    def submit(self, spec: JobSpec) -> str:
        job_id = new_job_id()
        self.active.admit(job_id, spec.caller)  # TooManyJobs past the bounds
        try:
            self.states.write(
                job_id,
                {
                    "status": "queued",
                    "submitted": time.time(),
                    "delivery": 1,
                    "submitter": spec.caller,
                },
            )
            self._deliver(job_id, spec.model_dump(mode="json"), 1)
        except BaseException:
            self.active.release(job_id, spec.caller)
            raise
        with self._lock:
            self._submitted += 1
            prune = self._submitted % _PRUNE_EVERY == 0
        if prune:  # finished jobs' states are kept for job_result_ttl
            self.states.prune(self.ttl)
        return job_id

    def _deliver(self, job_id: str, spec: dict[str, Any], delivery: int) -> None:
        pool = self._executor()
        args = (job_id, spec, self.context, self.states.root, delivery)
        marker = self.active.path(job_id, spec.get("caller"))
        try:
            future = pool.submit(execute, *args, marker)
        except BrokenProcessPool:  # broke since we took it: once more on a fresh pool
            self._replace_broken(pool)
            pool = self._executor()
            future = pool.submit(execute, *args, marker)
        with self._lock:
            self._pending[job_id] = future
            set_job_queue_depth(self.backend, len(self._pending))
        future.add_done_callback(lambda f: self._done(job_id, spec, delivery, pool, f))

    def _done(
        self,
        job_id: str,
        spec: dict[str, Any],
        delivery: int,
        pool: ProcessPoolExecutor,
        f: Future[None],
    ) -> None:
        with self._lock:
            if self._pending.get(job_id) is f:
                del self._pending[job_id]
            set_job_queue_depth(self.backend, len(self._pending))
        redelivered = False
        try:
            if f.cancelled() or self._closing:  # no-op for a job that finished
                self._give_up(job_id, "the server shut down before the job finished")
                return
            exc = f.exception()
            if isinstance(exc, BrokenProcessPool):
                self._replace_broken(pool)
                if delivery < self.max_deliveries:
                    log.warning("job %s: its worker process died; delivering it again", job_id)
                    self.states.write(job_id, {"status": "queued", "delivery": delivery + 1})
                    self._deliver(job_id, spec, delivery + 1)
                    redelivered = True
                else:
                    self._give_up(job_id, f"its worker process died {delivery} times")
            elif exc is not None:  # execute() records the job's own errors; this is ours
                self._give_up(job_id, describe_error(exc))
        finally:
            if not redelivered:  # the job ended: it no longer counts against the bounds
                self.active.release(job_id, spec.get("caller"))

    def _give_up(self, job_id: str, why: str) -> None:
        state = self.states.read(job_id)
        if state is None or state["status"] not in ("succeeded", "failed"):
            self.states.write(job_id, {"status": "failed", "error": f"job failed: {why}"})

    def status(self, job_id: str) -> JobStatus:
        state = self.states.status(job_id)
        if state is None:
            raise JobNotFound(f"job {job_id!r} not found (unknown, or its result expired)")
        return state

    def close(self) -> None:
        self._closing = True
        with self._lock:
            pool, self._pool = self._pool, None
            pending = list(self._pending)
        if pool is None:
            return
        # Python 3.11 has no public way to stop running workers; without this the
        # interpreter's exit would wait for every running job to finish.
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.terminate()
        for job_id in pending:
            self._give_up(job_id, "the server shut down before the job finished")
            self.active.forget(job_id)
