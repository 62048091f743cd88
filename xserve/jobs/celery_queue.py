"""The scale-out job queue: jobs sent to Celery workers (``xserve worker``) through Redis.

Job states come from Celery's result store: PENDING is ``queued`` (when the job
was submitted here, else unknown), STARTED ``running``, RETRY ``queued``,
SUCCESS ``succeeded``, FAILURE and REVOKED ``failed`` with the error text.
Redis unreachable is reported as :class:`JobQueueUnavailable` (503): the API
keeps predicting.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from xserve.errors import JobNotFound, JobQueueUnavailable
from xserve.jobs.base import JobQueue, JobSpec, JobStatus, check_job_id, describe_error, new_job_id
from xserve.jobs.celery_app import TASK_NAME, make_celery
from xserve.jobs.redis_jobs import redis_jobs
from xserve.settings import Settings

__all__ = ["CeleryQueue", "redact"]

_UNREACHABLE = (RedisError, KombuError, OSError)


def redact(url: str) -> str:
    """The URL without its password, fit for error messages."""
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)


class CeleryQueue(JobQueue):
    backend = "celery"

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)
        assert settings.broker_url is not None
        self.queue = settings.job_queue
        self.markers = redis_jobs(settings)
        self._where = redact(settings.broker_url)

    def _unavailable(self, exc: Exception) -> JobQueueUnavailable:
        return JobQueueUnavailable(
            f"the explanation job queue is unavailable: cannot reach Redis at {self._where} "
            f"({type(exc).__name__}: {exc}); predictions are not affected"
        )

    def submit(self, spec: JobSpec) -> str:
        job_id = new_job_id()
        try:
            self.markers.admit(job_id, spec.caller)  # TooManyJobs past the bounds
            self.markers.created(job_id, spec.caller)
            self.markers.put_spec(job_id, spec.model_dump(mode="json"))
            # The message names the job, nothing more: its rows are not in the clear in
            # the broker, in task events or in `celery inspect`.
            self.app.send_task(TASK_NAME, task_id=job_id, queue=self.queue)
        except _UNREACHABLE as exc:
            with contextlib.suppress(*_UNREACHABLE):
                self.markers.finished(job_id, spec.caller)
            raise self._unavailable(exc) from None
        return job_id

    def status(self, job_id: str) -> JobStatus:
        check_job_id(job_id)
        try:
            meta: dict[str, Any] = self.app.backend.get_task_meta(job_id)
            state = meta.get("status", "PENDING")
            submitted, submitter = self.markers.read(job_id)
            if state == "PENDING" and not submitted:
                raise JobNotFound(f"job {job_id!r} not found (unknown, or its result expired)")
        except _UNREACHABLE as exc:
            raise self._unavailable(exc) from None
        result = meta.get("result")
        if state == "SUCCESS":
            try:
                answer = self.markers.answer(job_id)
            except _UNREACHABLE as exc:
                raise self._unavailable(exc) from None
            if answer is None and isinstance(result, dict) and "explanations" in result:
                answer = result  # a job run by an earlier version returned its answer
            if answer is None:
                raise JobNotFound(f"job {job_id!r} not found (unknown, or its result expired)")
            return JobStatus(job_id, "succeeded", result=answer, submitter=submitter)
        if state in ("FAILURE", "REVOKED"):
            error = describe_error(result) if isinstance(result, BaseException) else str(result)
            return JobStatus(job_id, "failed", error=error or state.lower(), submitter=submitter)
        if state == "STARTED":
            pid = result.get("pid") if isinstance(result, dict) else None
            return JobStatus(job_id, "running", worker_pid=pid, submitter=submitter)
        return JobStatus(job_id, "queued", submitter=submitter)

    def broker_length(self) -> int | None:
        """Jobs waiting in Redis (the queue's list; Celery's default, unprioritised layout):
        one LLEN, for the metrics scrape."""
        try:
            return int(self.markers.client.llen(self.queue))
        except _UNREACHABLE:
            return None

    def close(self) -> None:
        self.app.close()
