"""``xserve precompute``: fill the explanation cache for every row of a file, through jobs.

The rows go through the configured job queue, in chunks, so with Celery every
``xserve worker`` shares the work; with the in-process queue this command's
own pool uses every core. Workers write each row to the cache as soon as it is
explained, so stopping (Ctrl-C) loses at most the rows in progress, and a
rerun skips every row already cached.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from xserve.cache import explanation_key, open_cache
from xserve.errors import TooManyJobs
from xserve.explainers.methods import canonical_params, check_offered, job_method, parse_params
from xserve.jobs import open_queue
from xserve.jobs.base import JobQueue, JobSpec, encode_rows
from xserve.jobs.limits import check_job_size
from xserve.repository.repository import ModelRepository
from xserve.repository.version import frame_to_matrix, read_table
from xserve.settings import Settings

__all__ = ["PrecomputeSummary", "precompute"]

_POLL = 0.2
_WINDOW = 64


@dataclass
class PrecomputeSummary:
    rows: int
    skipped: int
    """Rows already in the cache."""
    computed: int
    failed: int
    errors: list[str]


def precompute(
    settings: Settings,
    name: str,
    data: Path,
    method: str,
    params: dict[str, Any],
    version: str | None = None,
    chunk: int = 16,
) -> PrecomputeSummary:
    repository = ModelRepository(settings.models_dir)
    repository.scan(only=name)
    model = repository.get(name, version)
    cls = job_method(method)
    check_offered(cls, model)
    params_text = canonical_params(parse_params(cls, params))
    x = frame_to_matrix(read_table(data), model.features, str(data))
    cache = open_cache(settings)
    keys = [explanation_key(model, cls.method, params_text, row) for row in x]
    todo = [i for i, found in enumerate(cache.get_many(keys)) if found is None]
    summary = PrecomputeSummary(len(x), len(x) - len(todo), 0, 0, [])
    if not todo:
        return summary
    # Each chunk is a job: bounded as the API bounds one (XSERVE_JOB_MAX_WORK).
    check_job_size(
        cls.method,
        json.loads(params_text),
        min(chunk, len(todo)),
        x.shape[1],
        settings.job_max_work,
    )
    if settings.job_workers is None:  # no API to keep a core free for
        settings = settings.model_copy(update={"job_workers": max(1, _cores())})
    queue = open_queue(settings)
    bar = tqdm(
        total=len(x),
        initial=summary.skipped,
        unit="row",
        desc=f"{name} v{model.version} {cls.method}",
        file=sys.stderr,
    )
    # Jobs in flight at once: the queue is bounded (XSERVE_JOBS_MAX_QUEUED) and shared with
    # the API's callers, so a large file goes through a window of it, never all at once.
    window = max(1, min(_WINDOW, settings.jobs_max_queued // 2))
    try:
        pending: dict[str, int] = {}
        for start in range(0, len(todo), chunk):
            rows = todo[start : start + chunk]
            spec = JobSpec(
                model=model.name,
                version=model.version,
                digest=model.digest,
                method=cls.method,
                params=params,
                rows=encode_rows(x[rows]),
                record=False,  # filling the cache decides nothing
            )
            while True:
                if len(pending) < window:
                    try:
                        pending[queue.submit(spec)] = len(rows)
                        break
                    except TooManyJobs:  # others' jobs fill the queue: wait our turn
                        pass
                time.sleep(_POLL)
                _collect(queue, pending, bar, summary)
        while pending:
            time.sleep(_POLL)
            _collect(queue, pending, bar, summary)
    finally:
        bar.close()
        queue.close()
        cache.close()
    return summary


def _collect(
    queue: JobQueue, pending: dict[str, int], bar: tqdm[Any], summary: PrecomputeSummary
) -> None:
    """Count the rows of every job that finished since the last look."""
    for job_id in list(pending):
        state = queue.status(job_id)
        if not state.finished:
            continue
        n = pending.pop(job_id)
        bar.update(n)
        if state.status == "succeeded":
            summary.computed += n
        else:
            summary.failed += n
            summary.errors.append(state.error or "unknown error")


def _cores() -> int:
    import os

    return os.cpu_count() or 1
