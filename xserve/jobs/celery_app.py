"""The Celery application of the scale-out job queue: Redis as broker and result store.

Delivery guarantees, and why:

- ``acks_late`` and ``reject_on_worker_lost``: a job is acknowledged only once
  it finished, so a worker process killed mid-job (OOM, ``kill -9``) puts it
  back on the queue and another process runs it. A job that kills its worker
  every time is failed after ``job_max_deliveries`` deliveries, counted in Redis.
- A whole worker host lost: Redis hands its unacknowledged jobs out again after
  ``job_visibility_timeout`` seconds.
- Soft and hard time limits: past the soft one the job fails with a clear
  message; past the hard one its process is killed.
- Connection errors retry the job with backoff; results expire after
  ``job_result_ttl`` seconds.

Privacy: a task's message carries only the job id. Its rows wait in Redis
(:mod:`xserve.jobs.redis_jobs`) and are deleted as the job ends, and the task
returns a summary, so ``celery inspect``, task events and the worker's log
(``Task … succeeded in …: <return value>``) never show an input.

``app`` is the application the environment (``XSERVE_*``) configures, for
Celery's own tools: ``celery -A xserve.jobs.celery_app inspect ping``.

Workers must see the same model versions (``XSERVE_MODELS_DIR``, a shared
volume) and the same cache (``XSERVE_CACHE_URL``) as the servers.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import redis
from celery import Celery, Task
from celery.backends.redis import RedisBackend
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_failure, task_revoked

from xserve.jobs.base import JobFailed, JobSpec, describe_error
from xserve.jobs.redis_jobs import RedisJobs, redis_jobs
from xserve.settings import Settings

__all__ = ["TASK_NAME", "PollingRedisBackend", "make_celery"]

TASK_NAME = "xserve.explain"
_TRANSIENT = (
    ConnectionError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


class PollingRedisBackend(RedisBackend):  # type: ignore[misc]
    """Celery's Redis result store, without subscribing to every result the server sends.

    The stock backend subscribes to a job's result channel when the job is sent,
    and leaves the subscription until someone calls ``get()``; xserve reads
    states by polling (``get_task_meta``), so those subscriptions would pile up.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


def make_celery(settings: Settings) -> Celery:
    url = settings.broker_url
    if not url:
        raise ValueError("the Celery job queue needs XSERVE_BROKER_URL (redis://host:6379/0)")
    app = Celery(
        "xserve",
        broker=url,
        backend=f"{PollingRedisBackend.__module__}:{PollingRedisBackend.__name__}+{url}",
        set_as_current=False,
    )
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.job_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        task_soft_time_limit=settings.job_soft_time_limit,
        task_time_limit=settings.job_time_limit,
        result_expires=int(settings.job_result_ttl),
        worker_prefetch_multiplier=1,  # long jobs: a worker takes one at a time
        broker_transport_options={"visibility_timeout": settings.job_visibility_timeout},
        broker_connection_timeout=2,
        broker_connection_retry_on_startup=True,
        redis_socket_connect_timeout=2,
        redis_socket_timeout=10,
        # A request must not hang while Redis is down: a few quick tries, then 503.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
    )
    _register_task(app, settings, redis_jobs(settings))
    return app


def _register_task(app: Celery, settings: Settings, jobs: RedisJobs) -> None:
    soft = settings.job_soft_time_limit
    max_deliveries = settings.job_max_deliveries

    @app.task(  # type: ignore[untyped-decorator]
        name=TASK_NAME,
        bind=True,
        autoretry_for=_TRANSIENT,
        max_retries=max_deliveries,
        retry_backoff=True,
        retry_backoff_max=30,
    )
    def explain(task: Task, legacy: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the job named by the task's id. Its inputs are read from Redis (the
        message carries none) and its answer is written there; the task returns only a
        summary, which is all Celery logs and stores."""
        from xserve.jobs.run import WorkerContext, run_job

        job_id: str = task.request.id
        spec = legacy if legacy is not None else jobs.spec(job_id)
        caller = spec.get("caller") if spec is not None else jobs.read(job_id)[1]
        try:
            if spec is None:
                raise JobFailed("job failed: its inputs expired before a worker took it")
            jobs.started(job_id, caller)
            deliveries = jobs.delivered(job_id)
            if deliveries > max_deliveries:
                raise JobFailed(f"job failed: its worker process died {deliveries - 1} times")
            ctx = WorkerContext.from_settings(settings)
            answer = run_job(JobSpec.model_validate(spec), ctx, job_id, soft)
            jobs.put_answer(job_id, answer)
        except _TRANSIENT:
            raise  # retried: the job has not ended
        except Exception as exc:  # the job fails with its message; the worker lives on
            _ended(jobs, job_id, caller)
            if _timed_out(exc):
                raise JobFailed(f"job failed: it ran past its time limit of {soft:g} s") from None
            if isinstance(exc, JobFailed):
                raise
            raise JobFailed(describe_error(exc)) from None
        _ended(jobs, job_id, caller)
        return {"job_id": job_id, "rows": len(answer.get("explanations") or [])}

    # Ends the task body never sees, in the worker's main process: a job revoked
    # (`celery control revoke`, or expired) and a job killed past its hard time limit.
    def ours(sender: Any) -> bool:
        return getattr(sender, "name", None) == TASK_NAME and getattr(sender, "app", None) is app

    def revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
        if ours(sender) and request is not None:
            _forget(jobs, request.id)

    def failed(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        if ours(sender) and task_id is not None:
            _forget(jobs, task_id)

    task_revoked.connect(revoked, weak=False)
    task_failure.connect(failed, weak=False)


def _forget(jobs: RedisJobs, job_id: str) -> None:
    """A job that ended outside its task body: as :func:`_ended`, its caller from its marker."""
    with contextlib.suppress(*_TRANSIENT, redis.exceptions.RedisError):
        _ended(jobs, job_id, jobs.read(job_id)[1])


def _ended(jobs: RedisJobs, job_id: str, caller: str | None) -> None:
    """The job ended: its inputs go, it counts no more, and its marker outlives the answer
    stored now (its submitter is needed while the answer is read)."""
    with contextlib.suppress(*_TRANSIENT, redis.exceptions.RedisError):
        jobs.finished(job_id, caller)
        jobs.keep(job_id)


def _timed_out(exc: BaseException) -> bool:
    """Whether the soft time limit struck, even where a library wrapped it in its own error."""
    seen: BaseException | None = exc
    for _ in range(20):
        if seen is None:
            return False
        if isinstance(seen, SoftTimeLimitExceeded):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@functools.cache
def _module_app() -> Celery:
    return make_celery(Settings())


def __getattr__(name: str) -> Any:
    """``app``: the application the environment configures, built on first use, so that
    Celery's own tools find it (``celery -A xserve.jobs.celery_app inspect ping``,
    ``status``, ``events``, Flower) while importing this module reads no settings."""
    if name == "app":
        return _module_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
