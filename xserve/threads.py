"""Native thread-pool sizing: oversubscribed BLAS/OpenMP threads wreck latency."""

from __future__ import annotations

import os

from xserve.settings import Settings

__all__ = ["THREAD_VARIABLES", "pin_env", "threads_per_worker"]

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def threads_per_worker(settings: Settings, workers: int = 1) -> int:
    if settings.threads_per_worker:
        return settings.threads_per_worker
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def pin_env(threads: int) -> None:
    """Set the thread variables before numpy & co. are imported (inherited by workers)."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    # Idle OpenMP threads that spin steal the core the next request needs.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["XSERVE_THREADS_PER_WORKER"] = str(threads)
