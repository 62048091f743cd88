"""Jobs queued or running in the in-process queues of every server process sharing a folder.

Each unfinished job has an empty marker file ``<jobs_dir>/active/<caller>.<host>.<pid>.<job
id>``, made by the server process that took the job and removed when the job ends there.
Counting is one directory listing under a lock file (``flock``), so server processes
admitting jobs at once never pass the bounds together. A marker whose server process
is gone (same host, pid not alive) is stale, as is another host's marker older than
``lease`` seconds (a process this one cannot probe): both are removed as they are seen.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from xserve.jobs.limits import too_many_jobs

__all__ = ["ActiveFiles"]

_ANONYMOUS = "-"


def _tag(text: str) -> str:
    """A name part that is safe in a file name whatever the text (callers, hosts)."""
    return text.encode().hex() or _ANONYMOUS


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class ActiveFiles:
    def __init__(self, root: Path, max_total: int, max_per_caller: int, lease: float) -> None:
        self.root = root
        self.max_total = max_total
        self.max_per_caller = max_per_caller
        self.lease = lease
        self._host = _tag(socket.gethostname())

    def _name(self, job_id: str, caller: str | None) -> str:
        who = _ANONYMOUS if caller is None else _tag(caller)
        return f"{who}.{self._host}.{os.getpid()}.{job_id}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _live(self) -> list[str]:
        """The markers of unfinished jobs; stale ones are removed on the way."""
        now = time.time()
        alive: dict[int, bool] = {}
        live = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                parts = entry.name.split(".")
                if len(parts) != 4:  # the lock file
                    continue
                _, host, pid_text, _ = parts
                if host == self._host and pid_text.isdigit():
                    pid = int(pid_text)
                    if pid not in alive:
                        alive[pid] = _alive(pid)
                    stale = not alive[pid]
                else:
                    try:
                        stale = now - entry.stat().st_mtime > self.lease
                    except FileNotFoundError:
                        continue
                if stale:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                else:
                    live.append(entry.name)
        return live

    def admit(self, job_id: str, caller: str | None) -> None:
        """Mark the job active, or raise TooManyJobs (429) when a bound is reached."""
        with self._locked():
            live = self._live()
            if len(live) >= self.max_total:
                raise too_many_jobs(None, len(live), self.max_total)
            if caller is not None:
                prefix = f"{_tag(caller)}."
                mine = sum(1 for name in live if name.startswith(prefix))
                if mine >= self.max_per_caller:
                    raise too_many_jobs(caller, mine, self.max_per_caller)
            fd = os.open(self.root / self._name(job_id, caller), os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)

    def path(self, job_id: str, caller: str | None) -> Path:
        """The job's marker, made by this process: removing it releases the job (the
        worker process does, as the job ends, before its final state is written)."""
        return self.root / self._name(job_id, caller)

    def release(self, job_id: str, caller: str | None) -> None:
        """The job ended (or was never queued): it no longer counts."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(job_id, caller))

    def forget(self, job_id: str) -> None:
        """Release ``job_id`` whoever submitted it (this process's shutdown)."""
        for path in self.root.glob(f"*.{self._host}.{os.getpid()}.{job_id}"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def count(self, caller: str | None = None) -> int:
        """Unfinished jobs: everyone's, or ``caller``'s."""
        if not self.root.is_dir():
            return 0
        with self._locked():
            live = self._live()
        if caller is None:
            return len(live)
        prefix = f"{_tag(caller)}."
        return sum(1 for name in live if name.startswith(prefix))
