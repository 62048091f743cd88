"""Explanation jobs: a queue in-process (default) or on Celery, chosen by ``XSERVE_BROKER_URL``.

The implementations are imported only when chosen: Celery and its Redis client
stay out of a server that does not use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xserve.jobs.base import JobQueue
    from xserve.settings import Settings

__all__ = ["open_queue"]


def open_queue(settings: Settings) -> JobQueue:
    """Celery when ``settings.broker_url`` is set, else the in-process pool."""
    if settings.broker_url:
        from xserve.jobs.celery_queue import CeleryQueue

        return CeleryQueue(settings)
    from xserve.jobs.inprocess import InProcessQueue

    return InProcessQueue(settings)
