"""The explanation cache: on disk (default) or in Redis, chosen by ``XSERVE_CACHE_URL``."""

from __future__ import annotations

from pathlib import Path

from xserve.cache.base import CacheStats, ExplanationCache
from xserve.cache.keys import explanation_key
from xserve.settings import Settings

__all__ = ["CacheStats", "ExplanationCache", "explanation_key", "is_redis_url", "open_cache"]


def is_redis_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


def open_cache(settings: Settings) -> ExplanationCache:
    """The cache ``settings.cache_url`` names: ``redis://...`` or a folder."""
    if is_redis_url(settings.cache_url):
        from xserve.cache.redis_cache import RedisCache

        return RedisCache(settings.cache_url, settings.cache_max_entries, settings.cache_max_age)
    from xserve.cache.disk import DiskCache

    return DiskCache(
        Path(settings.cache_url),
        settings.cache_max_entries,
        settings.cache_max_bytes,
        settings.cache_max_age,
    )
