"""What the Celery queue keeps in Redis beside Celery's own keys.

- ``xserve:job:<id>``: the job's marker, ``{"submitter": name or null}``. Celery
  reads a queued job and an unknown id alike (PENDING); the marker tells them
  apart and names who may read the job. It lives ``ttl`` seconds from submit;
  the worker extends it as the job ends, past the answer's own expiry.
- ``xserve:job:<id>:spec``: the job's inputs (its rows). The Celery task carries
  only the job id, so rows never show in ``celery inspect``, events or worker
  logs; the spec is deleted as the job ends and expires unread after ``ttl``.
- ``xserve:job:<id>:answer``: the finished job's answer, for ``ttl`` seconds. The
  task itself returns a summary without inputs, which is what Celery logs.
- ``xserve:jobs:<queue>:active`` and ``…:active:<caller>``: sorted sets of the
  unfinished jobs, scored by when their lease runs out, which bound the queue
  (:meth:`RedisJobs.admit`). A job leaves them as it ends; a job whose worker
  vanished leaves them when its lease runs out, so nothing counts forever.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

from xserve.jobs.limits import too_many_jobs
from xserve.settings import Settings

__all__ = ["RedisJobs", "redis_jobs"]

# Atomic, so servers admitting jobs at once never pass the bounds together. KEYS: every
# caller's set, the caller's set (the same key for a job without a caller). ARGV: now,
# lease end, job id, the bound over all, the bound per caller, seconds the sets live.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local total = redis.call('ZCARD', KEYS[1])
if total >= tonumber(ARGV[4]) then return {1, total} end
if KEYS[2] ~= KEYS[1] then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
  local mine = redis.call('ZCARD', KEYS[2])
  if mine >= tonumber(ARGV[5]) then return {2, mine} end
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return {0, total}
"""


class RedisJobs:
    KEEP_MARGIN = 60
    """Seconds the marker outlives an answer that expires ``ttl`` seconds after the job ends."""

    def __init__(
        self, url: str, ttl: float, queue: str, lease: float, max_total: int, max_per_caller: int
    ) -> None:
        self.url = url
        self.ttl = max(1, int(ttl))
        self.queue = queue
        self.lease = lease
        self.max_total = max_total
        self.max_per_caller = max_per_caller
        self._client: redis.Redis | None = None
        self._admit: Any = None
        self._pid = 0

    @property
    def client(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():  # never share a socket across fork
            self._client = redis.Redis.from_url(
                self.url, socket_connect_timeout=2, socket_timeout=5
            )
            self._admit = self._client.register_script(_ADMIT)
            self._pid = os.getpid()
        return self._client

    # -- the marker -----------------------------------------------------------------

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
        """Extend the marker as the job ends: its answer lives ``ttl`` seconds from now."""
        self.client.expire(f"xserve:job:{job_id}", self.ttl + self.KEEP_MARGIN)

    def delivered(self, job_id: str) -> int:
        key = f"xserve:job:{job_id}:deliveries"
        pipe = self.client.pipeline()
        pipe.incr(key)
        pipe.expire(key, self.ttl)
        count, _ = pipe.execute()
        return int(count)

    # -- inputs and answer ------------------------------------------------------------

    def put_spec(self, job_id: str, spec: dict[str, Any]) -> None:
        self.client.set(f"xserve:job:{job_id}:spec", json.dumps(spec).encode(), ex=self.ttl)

    def spec(self, job_id: str) -> dict[str, Any] | None:
        raw = self.client.get(f"xserve:job:{job_id}:spec")
        return None if raw is None else json.loads(raw)  # type: ignore[no-any-return]

    def put_answer(self, job_id: str, answer: dict[str, Any]) -> None:
        self.client.set(f"xserve:job:{job_id}:answer", json.dumps(answer).encode(), ex=self.ttl)

    def answer(self, job_id: str) -> dict[str, Any] | None:
        raw = self.client.get(f"xserve:job:{job_id}:answer")
        return None if raw is None else json.loads(raw)  # type: ignore[no-any-return]

    # -- the bounds -------------------------------------------------------------------

    def _sets(self, caller: str | None) -> list[str]:
        every = f"xserve:jobs:{self.queue}:active"
        return [every, every if caller is None else f"{every}:caller:{caller}"]

    def admit(self, job_id: str, caller: str | None) -> None:
        """Count the job as unfinished, or raise TooManyJobs (429) when a bound is reached."""
        self.client  # noqa: B018  (registers the script in this process)
        now = time.time()
        refused, count = self._admit(
            keys=self._sets(caller),
            args=[
                now,
                now + self.lease,
                job_id,
                self.max_total,
                self.max_per_caller,
                int(self.lease) + 1,
            ],
        )
        if refused == 1:
            raise too_many_jobs(None, int(count), self.max_total)
        if refused == 2:
            raise too_many_jobs(caller, int(count), self.max_per_caller)

    def started(self, job_id: str, caller: str | None) -> None:
        """A worker took the job: its lease starts again (it may have waited long)."""
        pipe = self.client.pipeline()
        for key in set(self._sets(caller)):
            pipe.zadd(key, {job_id: time.time() + self.lease}, xx=True)
        pipe.execute()

    def finished(self, job_id: str, caller: str | None) -> None:
        """The job ended: it no longer counts, and its inputs are gone."""
        pipe = self.client.pipeline()
        for key in set(self._sets(caller)):
            pipe.zrem(key, job_id)
        pipe.delete(f"xserve:job:{job_id}:spec")
        pipe.execute()

    def active(self, caller: str | None = None) -> int:
        """Unfinished jobs (leases not run out): everyone's, or ``caller``'s."""
        key = self._sets(caller)[1]
        return int(self.client.zcount(key, time.time(), "+inf"))


def redis_jobs(settings: Settings) -> RedisJobs:
    """The Redis side of the Celery queue that ``settings`` configure."""
    assert settings.broker_url is not None
    return RedisJobs(
        settings.broker_url,
        settings.job_result_ttl,
        queue=settings.job_queue,
        # A job may wait its turn, run to its hard limit, and wait again for redelivery
        # when its host is lost: only then is it counted no more.
        lease=settings.job_visibility_timeout + settings.job_time_limit,
        max_total=settings.jobs_max_queued,
        max_per_caller=settings.jobs_max_queued_per_caller,
    )
