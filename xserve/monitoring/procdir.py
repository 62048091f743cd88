"""The folder prometheus-client's multiprocess mode shares between server processes.

Kept apart from :mod:`xserve.monitoring.metrics` on purpose: prometheus-client
picks its mode when first imported, so ``xserve serve`` must set
``PROMETHEUS_MULTIPROC_DIR`` before anything imports it, in this process and
in the workers uvicorn starts (they inherit the environment).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

__all__ = ["VARIABLE", "metrics_dir"]

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


@contextmanager
def metrics_dir() -> Iterator[Path]:
    """A fresh temporary folder for this server's metrics, set in the environment and
    removed afterwards; or the folder the environment already names (left as it is: empty
    it before each start, as prometheus-client asks, or old processes' figures stay)."""
    given = os.environ.get(VARIABLE) or os.environ.get(VARIABLE.lower())
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        os.environ[VARIABLE] = str(path)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="xserve-metrics-"))
    os.environ[VARIABLE] = str(path)
    # uvicorn (one worker) re-raises SIGTERM once it has shut down gracefully; its default
    # action would end the process before the folder is removed, an exception does not.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield path
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        os.environ.pop(VARIABLE, None)
        shutil.rmtree(path, ignore_errors=True)


def _exit(signum: int, _: FrameType | None) -> None:
    raise SystemExit(128 + signum)
