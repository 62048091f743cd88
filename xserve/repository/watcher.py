"""Hot reload: scan the repository every few seconds, off the event loop."""

from __future__ import annotations

import asyncio
import logging

import anyio.to_thread

from xserve.repository.repository import ModelRepository

__all__ = ["watch"]

log = logging.getLogger(__name__)


async def watch(repository: ModelRepository, interval: float) -> None:
    """Rescan ``repository`` every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(repository.scan)
        except Exception:  # keep watching whatever one scan hit
            log.exception("repository scan failed")
