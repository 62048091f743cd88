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

Workers must see the same model versions (``XSERVE_MODELS_DIR``, a shared
volume) and the same cache (``XSERVE_CACHE_URL``) as the servers.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import redis
from celery import Celery, Task
from celery.backends.redis import RedisBackend
from celery.exceptions import SoftTimeLimitExceeded

from xserve.jobs.base import JobFailed, JobSpec, describe_error
from xserve.settings import Settings

__all__ = ["TASK_NAME", "JobMarkers", "PollingRedisBackend", "make_celery"]

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


class JobMarkers:
    """What Celery does not record: that a job was submitted (a queued job and an unknown
    id both read as PENDING), by whom, and how many times it was delivered.

    The marker ``xserve:job:<id>`` holds ``{"submitter": name or null}``; it lives
    ``ttl`` seconds from submit, and the worker extends it as the job ends, past the
    result's own expiry (so a stored result always has its submitter)."""

    KEEP_MARGIN = 60
    """Seconds the marker outlives a result that expires ``ttl`` seconds after the job ends."""

    def __init__(self, url: str, ttl: float) -> None:
        self.url = url
        self.ttl = max(1, int(ttl))
        self._client: redis.Redis | None = None
        self._pid = 0

    @property
    def client(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():  # never share a socket across fork
            self._client = redis.Redis.from_url(
                self.url, socket_connect_timeout=2, socket_timeout=5
            )
            self._pid = os.getpid()
        return self._client

    def created(self, job_id: str, submitter: str | None = None) -> None:
        marker = json.dumps({"submitter": submitter}).encode()
        self.client.set(f"xserve:job:{job_id}", marker, ex=self.ttl)

    def exists(self, job_id: str) -> bool:
        return bool(self.client.exists(f"xserve:job:{job_id}"))

    def read(self, job_id: str) -> tuple[bool, str | None]:
        """Whether the job was submitted (its marker lives), and by whom (None: no keys)."""
        raw = self.client.get(f"xserve:job:{job_id}")
        if raw is None:
            return False, None
        try:
            submitter = json.loads(raw).get("submitter")
        except (ValueError, AttributeError):  # a marker of an older version: b"1"
            return True, None
        return True, submitter if isinstance(submitter, str) else None

    def keep(self, job_id: str) -> None:
        """Extend the marker as the job ends: its result lives ``ttl`` seconds from now."""
        self.client.expire(f"xserve:job:{job_id}", self.ttl + self.KEEP_MARGIN)

    def delivered(self, job_id: str) -> int:
        key = f"xserve:job:{job_id}:deliveries"
        pipe = self.client.pipeline()
        pipe.incr(key)
        pipe.expire(key, self.ttl)
        count, _ = pipe.execute()
        return int(count)


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
    markers = JobMarkers(url, settings.job_result_ttl)
    _register_task(app, settings, markers)
    return app


def _register_task(app: Celery, settings: Settings, markers: JobMarkers) -> None:
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
    def explain(task: Task, spec: dict[str, Any]) -> dict[str, Any]:
        from xserve.jobs.run import WorkerContext, run_job

        deliveries = markers.delivered(task.request.id)
        if deliveries > max_deliveries:
            raise JobFailed(f"job failed: its worker process died {deliveries - 1} times")
        try:
            ctx = WorkerContext.from_settings(settings)
            return run_job(JobSpec.model_validate(spec), ctx, task.request.id, soft)
        except _TRANSIENT:
            raise
        except Exception as exc:  # the job fails with its message; the worker lives on
            if _timed_out(exc):
                raise JobFailed(f"job failed: it ran past its time limit of {soft:g} s") from None
            if isinstance(exc, JobFailed):
                raise
            raise JobFailed(describe_error(exc)) from None
        finally:  # the result is stored next, for ttl: its submitter must outlive it
            with contextlib.suppress(*_TRANSIENT, redis.exceptions.RedisError):
                markers.keep(task.request.id)


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
