"""Bounds on explanation jobs: how big one job may be, and the words of a refusal.

A job's work is its rows times the model evaluations each row costs (the
method's sampling parameter); one larger than ``XSERVE_JOB_MAX_WORK`` is refused
with 413 before it is queued. How many jobs may be queued or running at once
is counted by each queue (:mod:`xserve.jobs.inprocess`, :mod:`xserve.jobs.celery_queue`),
against ``XSERVE_JOBS_MAX_QUEUED`` and ``XSERVE_JOBS_MAX_QUEUED_PER_CALLER``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xserve.errors import PayloadTooLarge, TooManyJobs

__all__ = ["check_job_size", "evaluations_per_row", "too_many_jobs"]


def _kernel_shap(params: dict[str, Any], features: int) -> tuple[int, str]:
    nsamples = params.get("nsamples", "auto")
    if nsamples == "auto":  # shap's own choice
        return 2 * features + 2048, "kernel_shap nsamples (auto)"
    return int(nsamples), "kernel_shap nsamples"


def _lime(params: dict[str, Any], features: int) -> tuple[int, str]:
    return int(params.get("num_samples", 5000)), "lime num_samples"


def _anchors(params: dict[str, Any], features: int) -> tuple[int, str]:
    # An estimate: the coverage sample, and a batch per candidate feature and beam.
    coverage = int(params.get("coverage_samples", 10_000))
    batch = int(params.get("batch_size", 100)) * int(params.get("beam_size", 1))
    return coverage + batch * features, "anchors coverage_samples + batch_size x beam x features"


_EVALUATIONS: dict[str, Callable[[dict[str, Any], int], tuple[int, str]]] = {
    "kernel_shap": _kernel_shap,
    "lime": _lime,
    "anchors": _anchors,
}
_SAMPLE_KEYS = ("nsamples", "num_samples", "samples")


def evaluations_per_row(method: str, params: dict[str, Any], features: int) -> tuple[int, str]:
    """Model evaluations one row costs with ``params`` (defaults filled in), and what they
    are named; a method not listed here counts its ``samples``-like parameter, else 1."""
    known = _EVALUATIONS.get(method)
    if known is not None:
        return known(params, features)
    for key in _SAMPLE_KEYS:
        if isinstance(params.get(key), int):
            return int(params[key]), f"{method} {key}"
    return 1, method


def check_job_size(
    method: str, params: dict[str, Any], rows: int, features: int, limit: int
) -> None:
    """Refuse (413) a job whose rows x evaluations per row exceed ``limit``."""
    per_row, named = evaluations_per_row(method, params, features)
    work = rows * per_row
    if work > limit:
        raise PayloadTooLarge(
            f"explanation job too large: {rows} rows x {per_row} model evaluations per row "
            f"({named}) = {work:,} > {limit:,} (XSERVE_JOB_MAX_WORK); send fewer rows "
            "per request or fewer samples"
        )


def too_many_jobs(caller: str | None, queued: int, limit: int) -> TooManyJobs:
    """The 429 of a full queue: the caller's share (``caller``) or everyone's (None)."""
    if caller is not None:
        return TooManyJobs(
            f"caller {caller!r} has {queued} explanation jobs queued or running, the most "
            f"allowed (XSERVE_JOBS_MAX_QUEUED_PER_CALLER={limit}); retry when some finished"
        )
    return TooManyJobs(
        f"{queued} explanation jobs are queued or running, the most allowed "
        f"(XSERVE_JOBS_MAX_QUEUED={limit}); retry when some finished"
    )
