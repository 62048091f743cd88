"""Prometheus metrics: what is counted, and the text served at ``GET /metrics``.

Under ``xserve serve`` every process (each server worker, and each in-process
job worker, which inherits the environment) writes its samples to memory-mapped
files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode),
and whichever worker answers a scrape adds them all up: the figures are the
server's, not one worker's. Without that variable (tests, the batch CLI) the
samples stay in this process's memory, and ``/metrics`` shows them. Either way the
standard ``process_*``, ``python_info`` and ``python_gc_*`` metrics are those of the
process that answers. A scrape asking for OpenMetrics (``Accept:
application/openmetrics-text``) gets it; others get the classic text format.

The request path pays a dictionary lookup and two mmap writes (about 2 µs):
labelled children are made once per label set and kept. Gauges whose truth
lives elsewhere (drift windows, a Celery broker's queue) are computed when
scraped, by the process that answers.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "NO_MODEL",
    "RequestLabels",
    "current_request",
    "exposition",
    "multiprocess_mode",
    "note_model",
    "observe_cache",
    "observe_explanation",
    "observe_request",
    "observe_shadow",
    "process_exiting",
    "render",
    "set_job_queue_depth",
    "shadow_dropped",
    "watch_job_queue",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4"
"""What :func:`render` writes: the classic text format every Prometheus reads (the HTTP
layer adds ``charset=utf-8``)."""
OPENMETRICS = "application/openmetrics-text"
NO_MODEL = "-"
"""The model and version labels of requests no model answered (``/v1/models``, ``/v2``,
health, metrics, a 401): an explicit value, not an empty one, which Prometheus would
treat as no label at all."""
_REQUEST_LABELS = ("model", "version", "endpoint", "status")
_SHADOW_LABELS = ("model", "live_version", "shadow_version")
# Predictions take well under a millisecond: the default buckets start at 5 ms.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
EXPLAIN_BUCKETS = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
DIFFERENCE_BUCKETS = (1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 100.0)

REQUESTS = Counter(
    "xserve_requests",
    "HTTP requests answered, by model, version, endpoint and status code.",
    _REQUEST_LABELS,
)
LATENCY = Histogram(
    "xserve_request_duration_seconds",
    "Time from routing to the last byte of the answer, by model, version, endpoint and status.",
    _REQUEST_LABELS,
    buckets=LATENCY_BUCKETS,
)
EXPLAIN_SECONDS = Histogram(
    "xserve_explanation_duration_seconds",
    "Time of one explainer call: a micro-batch for inline methods (tree_shap, linear_shap), "
    "one row for job methods (kernel_shap, lime, anchors).",
    ("method",),
    buckets=EXPLAIN_BUCKETS,
)
EXPLAINED = Counter("xserve_explained_instances", "Instances explained, by method.", ("method",))
CACHE_HITS = Counter("xserve_cache_hits", "Explanation cache lookups found.", ("backend",))
CACHE_MISSES = Counter("xserve_cache_misses", "Explanation cache lookups missed.", ("backend",))
JOB_QUEUE_DEPTH = Gauge(
    "xserve_job_queue_depth",
    "Explanation jobs submitted to the in-process pools of the server processes and not "
    "finished (queued or running).",
    ("backend",),
    multiprocess_mode="livesum",
)
SHADOW_REQUESTS = Counter(
    "xserve_shadow_requests",
    "Copies of live requests for the shadow version: recorded, failed, or dropped (overload).",
    (*_SHADOW_LABELS, "outcome"),
)
SHADOW_AGREEMENT = Counter(
    "xserve_shadow_agreement",
    "Shadowed instances of classifiers whose predicted label agrees (or not) with the live one.",
    (*_SHADOW_LABELS, "agree"),
)
SHADOW_DIFFERENCE = Histogram(
    "xserve_shadow_abs_difference",
    "Shadowed instances of regressors: |shadow prediction - live prediction|.",
    _SHADOW_LABELS,
    buckets=DIFFERENCE_BUCKETS,
)


def multiprocess_mode() -> bool:
    """Whether samples go to the shared files: decided by prometheus-client when it was first
    imported, so ask it rather than the environment, which may have changed since."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


# -- labels of the request in progress ---------------------------------------------------


class RequestLabels:
    """Filled in while a request runs: the HTTP layer knows the endpoint and the status,
    the data plane which model and version answered."""

    __slots__ = ("model", "version")

    def __init__(self) -> None:
        self.model = ""
        self.version = ""


current_request: contextvars.ContextVar[RequestLabels | None] = contextvars.ContextVar(
    "xserve_request_labels", default=None
)


def note_model(model: str, version: str) -> None:
    """Label the request in progress (if any) with the model and version that answer it.
    Only names the repository knows reach a label, so the label sets stay bounded whatever
    paths callers invent."""
    labels = current_request.get()
    if labels is not None:
        labels.model = model
        labels.version = version


# -- observations ------------------------------------------------------------------------

_request_children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
_explain_children: dict[str, tuple[Any, Any]] = {}
_cache_children: dict[str, tuple[Any, Any]] = {}


def observe_request(model: str, version: str, endpoint: str, status: int, seconds: float) -> None:
    key = (model, version, endpoint, status)
    pair = _request_children.get(key)
    if pair is None:
        labels = (model or NO_MODEL, version or NO_MODEL, endpoint, str(status))
        pair = _request_children[key] = (REQUESTS.labels(*labels), LATENCY.labels(*labels))
    pair[0].inc()
    pair[1].observe(seconds)


def observe_explanation(method: str, seconds: float, instances: int) -> None:
    pair = _explain_children.get(method)
    if pair is None:
        pair = _explain_children[method] = (
            EXPLAIN_SECONDS.labels(method),
            EXPLAINED.labels(method),
        )
    pair[0].observe(seconds)
    pair[1].inc(instances)


def observe_cache(backend: str, hits: int, misses: int) -> None:
    pair = _cache_children.get(backend)
    if pair is None:
        pair = _cache_children[backend] = (CACHE_HITS.labels(backend), CACHE_MISSES.labels(backend))
    if hits:
        pair[0].inc(hits)
    if misses:
        pair[1].inc(misses)


def set_job_queue_depth(backend: str, depth: int) -> None:
    JOB_QUEUE_DEPTH.labels(backend).set(depth)


def observe_shadow(
    model: str,
    live_version: str,
    shadow_version: str,
    live: list[Any],
    shadow: list[Any],
    regression: bool,
) -> None:
    """Compare a shadow's predictions with the live ones, instance by instance."""
    labels = (model, live_version, shadow_version)
    SHADOW_REQUESTS.labels(*labels, "recorded").inc()
    if regression:
        child = SHADOW_DIFFERENCE.labels(*labels)
        for a, b in zip(live, shadow, strict=True):
            child.observe(abs(float(a) - float(b)))
        return
    agree = sum(a == b for a, b in zip(live, shadow, strict=True))
    if agree:
        SHADOW_AGREEMENT.labels(*labels, "true").inc(agree)
    if len(live) - agree:
        SHADOW_AGREEMENT.labels(*labels, "false").inc(len(live) - agree)


def shadow_dropped(model: str, live_version: str, shadow_version: str, outcome: str) -> None:
    """A copy not compared: ``dropped`` (too many in flight) or ``failed``."""
    SHADOW_REQUESTS.labels(model, live_version, shadow_version, outcome).inc()


# -- gauges computed when scraped ---------------------------------------------------------

_queue_depth: Callable[[], tuple[str, int | None]] | None = None


def watch_job_queue(depth: Callable[[], tuple[str, int | None]] | None) -> None:
    """Report a broker's queue length, ``depth() -> (queue name, length or None)``, when
    scraped (Celery); None stops."""
    global _queue_depth
    _queue_depth = depth


class _ScrapeTime(Collector):
    """Drift figures of the answering process's windows (as ``/v1/models/{m}/drift``
    answers), and the broker's queue length."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from _drift_families()
        yield from _performance_families()
        if _queue_depth is not None:
            queue, depth = _queue_depth()
            if depth is not None:
                family = GaugeMetricFamily(
                    "xserve_job_broker_queue_length",
                    "Explanation jobs waiting in the broker (Celery), not yet taken by a worker.",
                    labels=["queue"],
                )
                family.add_metric([queue], depth)
                yield family


def _drift_families() -> Iterator[GaugeMetricFamily]:
    try:
        from xserve.monitoring.drift import drift_figures
    except ImportError:  # drift monitoring not installed in this build
        return
    labels = ["model", "version", "feature"]
    psi = GaugeMetricFamily(
        "xserve_drift_psi",
        "Population stability index of a feature's recent traffic (this process's window) "
        "against the version's background: < 0.1 stable, 0.1-0.25 warn, > 0.25 drift.",
        labels=labels,
    )
    ks = GaugeMetricFamily(
        "xserve_drift_ks",
        "Two-sample Kolmogorov-Smirnov statistic of a feature's recent traffic against the "
        "version's background.",
        labels=labels,
    )
    try:
        figures = drift_figures()
    except Exception:  # a scrape must not fail over one window's statistics
        log.exception("drift figures failed")
        figures = []
    for f in figures:
        if f.psi is not None:
            psi.add_metric([f.model, f.version, f.feature], f.psi)
        if f.ks is not None:
            ks.add_metric([f.model, f.version, f.feature], f.ks)
    yield psi
    yield ks


def _performance_families() -> Iterator[GaugeMetricFamily]:
    from xserve.outcomes.gauges import performance_figures

    family = GaugeMetricFamily(
        "xserve_performance",
        "A model version's performance on its decisions with outcomes (AUC, accuracy, "
        "Brier, ECE; RMSE, MAE), as last computed by this process.",
        labels=["model", "version", "metric"],
    )
    for model, version, metric, value in performance_figures():
        family.add_metric([model, version, metric], value)
    yield family


_exposed: CollectorRegistry | None = None


def _registry() -> CollectorRegistry:
    """What a scrape shows, made once: every metric (added up over the server's
    processes in multiprocess mode), the answering process's own, and the gauges
    computed when scraped."""
    global _exposed
    if _exposed is None:
        registry = CollectorRegistry(auto_describe=False)
        if multiprocess_mode():
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            # prometheus-client leaves the standard process_*, python_info and python_gc_*
            # collectors out of multiprocess mode: they describe one process and cannot
            # be added up. Here they describe the process that answers the scrape (with
            # --workers N, one of N: each scrape may see another one's figures).
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        else:
            # The default registry: these metrics and the standard collectors.
            registry.register(REGISTRY)
        registry.register(_ScrapeTime())
        _exposed = registry
    return _exposed


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """Every metric, and its content type: OpenMetrics when the ``Accept`` header asks
    for it (``application/openmetrics-text``), else the classic text format."""
    if accept and OPENMETRICS in accept:
        encoder, content_type = choose_encoder(accept)
        return encoder(_registry()), content_type
    return generate_latest(_registry()), CONTENT_TYPE


def render() -> bytes:
    """Every metric in the Prometheus text format (:data:`CONTENT_TYPE`)."""
    return exposition()[0]


def process_exiting() -> None:
    """Drop this process's live gauges (queue depth) from the shared files as it stops."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
