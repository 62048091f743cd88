"""The job queue interface: submit an explanation job, read its status, wait for it.

Two implementations, chosen by ``XSERVE_BROKER_URL``: an in-process pool of
worker processes (the default) and Celery on Redis (scale-out). Both run the
same :func:`xserve.jobs.run.run_job` in a worker process, which fills the
explanation cache row by row and renders the answer.
"""

from __future__ import annotations

import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel

from xserve.errors import JobNotFound
from xserve.runtimes.base import Matrix

__all__ = [
    "JobFailed",
    "JobQueue",
    "JobSpec",
    "JobStatus",
    "Status",
    "check_job_id",
    "decode_rows",
    "describe_error",
    "encode_rows",
    "new_job_id",
    "poll_intervals",
]

Status = Literal["queued", "running", "succeeded", "failed"]
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class JobSpec(BaseModel):
    """Everything a worker needs, JSON-safe (NaN travels as null)."""

    model: str
    version: str
    digest: str
    """The artifact digest the server saw: a worker with another artifact refuses."""
    method: str
    params: dict[str, Any]
    rows: list[list[float | None]]
    label: str | None = None
    reasons: int = 4
    client_id: str | int | float | None = None
    """The request's own ``"id"``, echoed in the answer."""
    caller: str | None = None
    """Who submitted the job: its decision is recorded under this caller."""
    record: bool = True
    """Whether the answer is a decision to record (precomputing the cache is none)."""
    trace: dict[str, str] | None = None
    """The submitter's W3C trace context (``traceparent``), when tracing is on."""

    def matrix(self) -> Matrix:
        return decode_rows(self.rows)


def encode_rows(x: Matrix) -> list[list[float | None]]:
    """Rows as JSON: NaN (a missing value) becomes null."""
    return [[None if math.isnan(v) else v for v in row] for row in x.tolist()]


def decode_rows(rows: list[list[float | None]]) -> Matrix:
    values = [[np.nan if v is None else v for v in row] for row in rows]
    return np.array(values, dtype=np.float64).reshape(len(values), -1)


@dataclass
class JobStatus:
    job_id: str
    status: Status
    result: dict[str, Any] | None = None
    error: str | None = None
    worker_pid: int | None = None
    """The process running the job, while it runs (where the backend knows it)."""
    submitter: str | None = None
    """The caller who submitted the job, stored by the queue at submit (None: submitted
    without API keys). Only it, or a key with the audit or admin role, may read the job."""

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed")


class JobFailed(Exception):
    """A job's own failure, carrying the text the caller sees."""


def describe_error(exc: BaseException) -> str:
    from xserve.errors import XServeError

    if isinstance(exc, (XServeError, JobFailed)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def new_job_id() -> str:
    import uuid

    return uuid.uuid4().hex


def check_job_id(job_id: str) -> str:
    """Only ids this server makes are looked up (they also name files)."""
    if not _JOB_ID.match(job_id):
        raise JobNotFound(f"job {job_id!r} not found")
    return job_id


def poll_intervals(first: float = 0.002, cap: float = 0.025) -> Iterator[float]:
    """Short sleeps first (a finished job is seen within milliseconds), then ``cap``."""
    delay = first
    while True:
        yield delay
        delay = min(cap, delay * 1.5)


class JobQueue(ABC):
    backend: ClassVar[str]

    @abstractmethod
    def submit(self, spec: JobSpec) -> str:
        """Queue a job and return its id; raises JobQueueUnavailable when it cannot, and
        TooManyJobs when as many jobs as allowed are queued or running (for the caller, or
        overall). The job's submitter (``spec.caller``) is stored with it, for
        :attr:`JobStatus.submitter`; its inputs are kept only until it ends."""

    @abstractmethod
    def status(self, job_id: str) -> JobStatus:
        """The job's state (and result or error once finished); JobNotFound if unknown."""

    def wait(self, job_id: str, timeout: float) -> JobStatus:
        """The job's state once finished, or when ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        for delay in poll_intervals():
            state = self.status(job_id)
            left = deadline - time.monotonic()
            if state.finished or left <= 0:
                return state
            time.sleep(min(delay, left))
        raise AssertionError("unreachable")

    def broker_length(self) -> int | None:
        """Jobs waiting in an external broker (metrics); None where there is none."""
        return None

    def close(self) -> None:  # noqa: B027  (optional)
        """Stop taking jobs and release workers and connections."""
