"""The explanation cache on disk (the default): one small JSON file per entry.

``<root>/<first two hex digits of the key>/<key>.json``. Several server and
worker processes share one folder safely: an entry is written to a temporary
file beside it and renamed into place (``os.replace`` is atomic), so a reader
sees the whole old entry, the whole new one or none. An entry's age is its
file's modification time. Bounds are enforced by a sweep that removes expired
entries and then the oldest until the folder is under 90% of its bounds (the
slack keeps a full cache from sweeping on every write); it runs when this
process's running estimate crosses a bound, and every ``_RESWEEP`` writes to
see what other processes added. With several writers the folder can exceed a
bound by each one's slack until their next sweep.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from xserve.cache.base import ExplanationCache, encode
from xserve.explainers.methods import Record

__all__ = ["DiskCache"]

_RESWEEP = 1000
_LOW_WATER = 0.9
_STALE_TEMP = 3600.0
"""Seconds after which a temporary file is a leftover of a killed writer."""


class DiskCache(ExplanationCache):
    backend = "disk"

    def __init__(self, root: Path, max_entries: int, max_bytes: int, max_age: float) -> None:
        super().__init__(max_entries, max_age)
        self.root = root
        self.max_bytes = max_bytes
        self._entries: int | None = None  # estimate; None until the first sweep counts
        self._bytes = 0
        self._writes = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def _read_one(self, key: str, now: float) -> bytes | None:
        path = self._path(key)
        try:
            with path.open("rb") as fh:
                fresh = now - os.fstat(fh.fileno()).st_mtime <= self.max_age
                data = fh.read() if fresh else None
        except FileNotFoundError:
            return None
        if data is None:  # too old: gone for every process
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                self._evicted(1)
        return data

    def _read_many(self, keys: list[str]) -> list[bytes | None]:
        now = time.time()
        return [self._read_one(k, now) for k in keys]

    def put(self, key: str, record: Record) -> None:
        path = self._path(key)
        data = encode(record)
        # Entries are explanations of people's rows: readable by the server's user only
        # (mkstemp makes the file 0600; mode= applies to each folder made here).
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        with self._lock:
            self._writes += 1
            if self._entries is not None:
                self._entries += 1
                self._bytes += len(data)
            due = (
                self._entries is None
                or self._entries > self.max_entries
                or self._bytes > self.max_bytes
                or self._writes % _RESWEEP == 0
            )
        if due:
            self.sweep()

    def _scan(self) -> list[tuple[float, int, Path]]:
        found = []
        for path in self.root.glob("??/*"):
            try:
                st = path.stat()
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            if path.name.endswith(".tmp"):
                if time.time() - st.st_mtime > _STALE_TEMP:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                continue
            if path.suffix == ".json":
                found.append((st.st_mtime, st.st_size, path))
        return found

    def sweep(self) -> None:
        """Remove expired entries, then the oldest while over the bounds."""
        entries = sorted(self._scan(), key=lambda e: e[0])
        now = time.time()
        count, size = len(entries), sum(e[1] for e in entries)
        over = count > self.max_entries or size > self.max_bytes
        keep_entries = int(self.max_entries * _LOW_WATER) if over else self.max_entries
        keep_bytes = int(self.max_bytes * _LOW_WATER) if over else self.max_bytes
        removed = 0
        for mtime, nbytes, path in entries:
            expired = now - mtime > self.max_age
            if not expired and count <= keep_entries and size <= keep_bytes:
                break  # sorted oldest first: the rest are younger and fit
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
            count -= 1
            size -= nbytes
        self._evicted(removed)
        with self._lock:
            self._entries, self._bytes = count, size

    def _size(self) -> tuple[int, int | None]:
        entries = self._scan()
        return len(entries), sum(e[1] for e in entries)

    def clear(self) -> None:
        for _, _, path in self._scan():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with self._lock:
            self._entries, self._bytes = 0, 0
