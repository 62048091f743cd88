"""The latest performance figures of each model version, as ``/metrics`` publishes them
(``xserve_performance{model,version,metric}``).

Computing them reads the audit log, far too slow for a scrape: each server process
refreshes them every ``XSERVE_PERFORMANCE_INTERVAL`` seconds (and whenever
``/performance`` is read), and a scrape shows the last ones.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["performance_figures", "publish"]

_lock = threading.Lock()
_latest: dict[tuple[str, str, str], float] = {}


def publish(report: dict[str, Any]) -> None:
    """Keep the figures of a ``performance`` answer (every version of one model)."""
    name = str(report["model"])
    fresh = {
        (name, str(v["version"]), metric): float(figure["value"])
        for v in report["versions"]
        for metric, figure in v["metrics"].items()
        if figure.get("value") is not None
    }
    with _lock:
        for key in [k for k in _latest if k[0] == name]:
            if key[1] in {str(v["version"]) for v in report["versions"]}:
                del _latest[key]
        _latest.update(fresh)


def performance_figures() -> list[tuple[str, str, str, float]]:
    """(model, version, metric, value) of every figure kept."""
    with _lock:
        return [(*key, value) for key, value in sorted(_latest.items())]
