"""The explanation cache interface: records by key, with bounds and hit/miss/eviction counts.

Implementations store JSON records (see :mod:`xserve.explainers.methods`) under
keys built by :func:`xserve.cache.keys.explanation_key`; they bound the number
of entries and their age (and, where they can, their bytes), evicting the
oldest first. The counts are this object's, since its process started.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

from xserve.explainers.methods import Record
from xserve.monitoring.metrics import observe_cache

__all__ = ["CacheStats", "ExplanationCache", "decode", "encode"]


@dataclass
class CacheStats:
    backend: str
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int | None
    """Stored size where the backend knows it (the disk cache)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode(record: Record) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def decode(raw: bytes) -> Record | None:
    try:
        value = json.loads(raw)
    except ValueError:  # a torn or foreign file: treat as absent
        return None
    return value if isinstance(value, dict) else None


class ExplanationCache(ABC):
    backend: str = "?"

    def __init__(self, max_entries: int, max_age: float) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    # -- what implementations provide ----------------------------------------
    @abstractmethod
    def _read_many(self, keys: list[str]) -> list[bytes | None]:
        """Stored bytes per key; None for absent or too old (count those evicted)."""

    @abstractmethod
    def put(self, key: str, record: Record) -> None:
        """Store ``record`` (replacing any), then evict down to the bounds."""

    @abstractmethod
    def _size(self) -> tuple[int, int | None]:
        """(entries, bytes or None)."""

    @abstractmethod
    def clear(self) -> None: ...

    def close(self) -> None:  # noqa: B027  (optional: most caches hold nothing to release)
        """Release connections (nothing to do for the disk cache)."""

    # -- shared ----------------------------------------------------------------
    def get_many(self, keys: list[str]) -> list[Record | None]:
        found = [decode(raw) if raw is not None else None for raw in self._read_many(keys)]
        hits = sum(r is not None for r in found)
        with self._lock:
            self._hits += hits
            self._misses += len(found) - hits
        # Also to the shared metrics: job worker processes look rows up too.
        observe_cache(self.backend, hits, len(found) - hits)
        return found

    def get(self, key: str) -> Record | None:
        return self.get_many([key])[0]

    def _evicted(self, n: int) -> None:
        if n:
            with self._lock:
                self._evictions += n

    def stats(self) -> CacheStats:
        entries, size = self._size()
        with self._lock:
            hits, misses, evictions = self._hits, self._misses, self._evictions
        return CacheStats(self.backend, hits, misses, evictions, entries, size)
