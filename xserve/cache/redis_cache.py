"""The explanation cache in Redis (``XSERVE_CACHE_URL=redis://host:6379/1``), for scale-out.

Each entry is a string key with a TTL of ``max_age`` (Redis expires it). A
sorted set indexes the keys by write time, so the number of entries is bounded:
past ``max_entries`` the oldest are removed. Bytes are bounded by Redis itself
(``maxmemory``). Redis being unreachable is not an error for the cache: reads
miss and writes are skipped (logged), and the explanation is computed instead.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.exceptions import RedisError

from xserve.cache.base import ExplanationCache, encode
from xserve.explainers.methods import Record

__all__ = ["RedisCache"]

log = logging.getLogger(__name__)
_WARN_EVERY = 30.0


class RedisCache(ExplanationCache):
    backend = "redis"

    def __init__(
        self, url: str, max_entries: int, max_age: float, prefix: str = "xserve:explanation:"
    ) -> None:
        super().__init__(max_entries, max_age)
        self.client: redis.Redis = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5
        )
        self.prefix = prefix
        self.index = f"{prefix}index"
        self._warned = 0.0

    def _warn(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned > _WARN_EVERY:
            self._warned = now
            log.warning("explanation cache: Redis %s failed, continuing without it: %s", what, exc)

    def _read_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            found: list[Any] = self.client.mget([self.prefix + k for k in keys])
            return [bytes(v) if v is not None else None for v in found]
        except RedisError as exc:
            self._warn("read", exc)
            return [None] * len(keys)

    def put(self, key: str, record: Record) -> None:
        now = time.time()
        try:
            pipe = self.client.pipeline()
            pipe.set(self.prefix + key, encode(record), px=max(1, int(self.max_age * 1000)))
            pipe.zadd(self.index, {key: now})
            pipe.zremrangebyscore(self.index, "-inf", now - self.max_age)  # expired by TTL
            pipe.zcard(self.index)
            *_, expired, count = pipe.execute()
            self._evicted(int(expired))
            if int(count) > self.max_entries:
                self._trim(int(count) - self.max_entries)
        except RedisError as exc:
            self._warn("write", exc)

    def _trim(self, excess: int) -> None:
        oldest: list[Any] = self.client.zpopmin(self.index, excess)
        if oldest:
            self.client.delete(*[self.prefix + k.decode() for k, _ in oldest])
            self._evicted(len(oldest))

    def _size(self) -> tuple[int, int | None]:
        try:
            expired = self.client.zremrangebyscore(self.index, "-inf", time.time() - self.max_age)
            self._evicted(int(expired))
            return int(self.client.zcard(self.index)), None
        except RedisError as exc:
            self._warn("size", exc)
            return 0, None

    def clear(self) -> None:
        members: list[Any] = self.client.zrange(self.index, 0, -1)
        keys = [self.prefix + k.decode() for k in members]
        for start in range(0, len(keys), 1000):
            self.client.delete(*keys[start : start + 1000])
        self.client.delete(self.index)

    def close(self) -> None:
        self.client.close()
