"""Job state files of the in-process queue: ``<jobs_dir>/<job id>.json``.

Written by the server process that takes the job (queued, delivered again,
given up) and by the worker process that runs it (running, succeeded,
failed), each write atomic (temporary file and ``os.replace``). So any server
process sharing the folder can answer ``GET /v1/jobs/{id}``, whichever
process created the job (``xserve serve --workers N``). States are files of mode 0600
in a folder of mode 0700, and hold no inputs: a job's rows go to its worker process
in memory, and its answer is all that is kept once it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from xserve.jobs.base import JobStatus, check_job_id

__all__ = ["SUBMITTER", "JobStates"]

SUBMITTER = "submitter"
"""The state's field naming who submitted the job (kept across every rewrite)."""


class JobStates:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._private = False

    def _folder(self) -> None:
        """The folder, made (or narrowed to) 0700 once: states are 0600 files in it."""
        if self._private:
            return
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.root.stat().st_mode & 0o077:
            with contextlib.suppress(PermissionError):  # another user's folder: leave it
                os.chmod(self.root, 0o700)
        self._private = True

    def _path(self, job_id: str) -> Path:
        return self.root / f"{check_job_id(job_id)}.json"

    def write(self, job_id: str, state: dict[str, Any]) -> None:
        """Replace the job's state; its ``submitter``, written at submit, is kept."""
        if SUBMITTER not in state:
            previous = self.read(job_id)
            if previous is not None and previous.get(SUBMITTER) is not None:
                state = {**state, SUBMITTER: previous[SUBMITTER]}
        self._folder()
        # mkstemp makes the file 0600; os.replace keeps its mode.
        fd, tmp = tempfile.mkstemp(prefix=f".{job_id}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump({**state, "job_id": job_id, "updated": time.time()}, fh)
            os.replace(tmp, self._path(job_id))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def read(self, job_id: str) -> dict[str, Any] | None:
        try:
            with self._path(job_id).open() as fh:
                data = json.load(fh)
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def status(self, job_id: str) -> JobStatus | None:
        data = self.read(job_id)
        if data is None:
            return None
        return JobStatus(
            job_id=job_id,
            status=data["status"],
            result=data.get("result"),
            error=data.get("error"),
            worker_pid=data.get("pid") if data["status"] == "running" else None,
            submitter=data.get(SUBMITTER),
        )

    def prune(self, older_than: float) -> int:
        """Remove states last written more than ``older_than`` seconds ago."""
        removed = 0
        cutoff = time.time() - older_than
        for path in [*self.root.glob("*.json"), *self.root.glob(".*.tmp")]:
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed
