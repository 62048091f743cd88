"""OpenTelemetry tracing, optional and off by default.

Tracing is on in a process when the ``otel`` extra (``opentelemetry-sdk``) is installed,
``OTEL_SDK_DISABLED`` is not ``true``, and an exporter is named: ``OTEL_TRACES_EXPORTER``
(``console``, ``otlp``; a comma-separated list; ``none`` is none) or ``XSERVE_OTEL_FILE``
(spans as JSON lines appended to that file: every process of a deployment may share it).
The rest is the SDK's own configuration: ``OTEL_SERVICE_NAME`` (default ``xserve``),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_PROPAGATORS`` (default W3C
``traceparent`` and baggage), ``OTEL_BSP_*`` and ``OTEL_EXPORTER_OTLP_*``.

Off, :func:`span` returns one shared null context and :func:`inject` None: nothing is
imported, built or allocated per call. The decision is made once per process, on first
use (after a fork too: Celery's prefork children decide, and export, themselves).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

__all__ = [
    "asgi_middleware",
    "attached",
    "current",
    "enable",
    "enabled",
    "inject",
    "server_span",
    "span",
]

log = logging.getLogger("xserve")

Carrier = dict[str, str]
"""W3C trace context headers (``traceparent``, ``tracestate``) as a JSON-safe mapping."""

_NULL: AbstractContextManager[None] = contextlib.nullcontext()
_UNSET: Any = object()
_tracer: Any = _UNSET  # opentelemetry Tracer once decided on; None when off
_lock = threading.Lock()


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


def _exporter_names() -> list[str]:
    names = os.environ.get("OTEL_TRACES_EXPORTER", "")
    return [n.strip().lower() for n in names.split(",") if n.strip() and n.strip() != "none"]


def _otlp_exporter() -> Any:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    )
    try:
        if protocol.startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[no-redef]
                OTLPSpanExporter,
            )
    except ImportError:
        log.error(
            "OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp: no spans exported there"
        )
        return None
    return OTLPSpanExporter()


def _processors() -> list[Any]:
    """The span processors the environment asks for."""
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    processors: list[Any] = []
    for name in _exporter_names():
        if name == "console":  # a debugging aid: written as spans end
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            exporter = _otlp_exporter()
            if exporter is not None:
                processors.append(BatchSpanProcessor(exporter))
        else:
            log.error("OTEL_TRACES_EXPORTER: unknown exporter %r (console, otlp, none)", name)
    path = os.environ.get("XSERVE_OTEL_FILE")
    if path:  # synchronous: a Celery child may end without flushing a batch
        processors.append(SimpleSpanProcessor(json_lines_exporter(path)))
    return processors


def _from_environment() -> Any:
    """A tracer as the OTEL_* variables configure it, or None (tracing off)."""
    if _flag("OTEL_SDK_DISABLED") or not (_exporter_names() or os.environ.get("XSERVE_OTEL_FILE")):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        log.warning(
            "OTEL_* asks for tracing, but opentelemetry-sdk is not installed (xserve[otel])"
        )
        return None
    processors = _processors()
    if not processors:
        return None
    defaults = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "xserve"}
    provider = TracerProvider(resource=Resource.create(defaults))
    for processor in processors:
        provider.add_span_processor(processor)
    return provider.get_tracer("xserve")


def _get() -> Any:
    global _tracer
    if _tracer is _UNSET:
        with _lock:
            if _tracer is _UNSET:
                _tracer = _from_environment()
    return _tracer


def enable(exporter: Any | None) -> None:
    """Trace this process into ``exporter`` (a SpanExporter, spans exported as they end),
    whatever the environment says; None turns tracing off. For tests and embedding."""
    global _tracer
    if exporter is None:
        _tracer = None
        return
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _tracer = provider.get_tracer("xserve")


def enabled() -> bool:
    return _get() is not None


def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    parent: Mapping[str, str] | None = None,
    kind: str = "INTERNAL",
) -> AbstractContextManager[Any]:
    """A span around the block, child of ``parent`` (a carrier from :func:`inject`) when
    given, else of the current span; the shared null context when tracing is off."""
    tracer = _tracer if _tracer is not _UNSET else _get()
    if tracer is None:
        return _NULL
    return _started(tracer, name, attributes, parent, kind)


@contextlib.contextmanager
def _started(
    tracer: Any,
    name: str,
    attributes: Mapping[str, Any] | None,
    parent: Mapping[str, str] | None,
    kind: str,
) -> Iterator[Any]:
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind

    context = propagate.extract(parent) if parent is not None else None
    with tracer.start_as_current_span(
        name, context=context, kind=SpanKind[kind], attributes=attributes
    ) as current:
        yield current


def server_span(
    name: str, headers: Iterable[tuple[str, str]], attributes: Mapping[str, Any] | None = None
) -> AbstractContextManager[Any]:
    """A SERVER span continuing the caller's trace from its headers (HTTP headers or gRPC
    metadata: ``traceparent``, ``tracestate``); the null context when tracing is off."""
    if (_tracer if _tracer is not _UNSET else _get()) is None:
        return _NULL
    carrier = {key.lower(): value for key, value in headers if isinstance(value, str)}
    return span(name, attributes, carrier, "SERVER")


def inject() -> Carrier | None:
    """The current trace context as W3C headers, to carry across processes (a job's spec);
    None when tracing is off."""
    if (_tracer if _tracer is not _UNSET else _get()) is None:
        return None
    from opentelemetry import propagate

    carrier: Carrier = {}
    propagate.inject(carrier)
    return carrier


def current() -> Any | None:
    """The current trace context, to carry to another thread (:func:`attached`); None
    when tracing is off."""
    if (_tracer if _tracer is not _UNSET else _get()) is None:
        return None
    from opentelemetry import context

    return context.get_current()


def attached(trace: Any | None) -> AbstractContextManager[None]:
    """The block runs in ``trace`` (from :func:`current`), its spans children of it; the
    null context for None."""
    if trace is None:
        return _NULL
    return _attached(trace)


@contextlib.contextmanager
def _attached(trace: Any) -> Iterator[None]:
    from opentelemetry import context

    token = context.attach(trace)
    try:
        yield
    finally:
        context.detach(token)


def asgi_middleware() -> Sequence[Any]:
    """The ASGI middleware that gives each HTTP request its SERVER span (W3C
    ``traceparent`` in, status code out), when tracing is on; none otherwise."""
    if not enabled():
        return []
    return [TracingMiddleware]


def json_lines_exporter(path: str) -> Any:
    """A SpanExporter appending each span as one JSON line to ``path`` (``XSERVE_OTEL_FILE``):
    the spans of every process that shares the file, for tests and local debugging. Opened
    per export, in append mode, one write per batch: safe across forks and processes."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesExporter(SpanExporter):  # type: ignore[misc]
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            lines = "".join(s.to_json(indent=None) + "\n" for s in spans)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, lines.encode())
                finally:
                    os.close(fd)
            except OSError as exc:
                log.error("XSERVE_OTEL_FILE: cannot write %s: %s", path, exc)
                return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS

    return JsonLinesExporter()


Scope = dict[str, Any]
Message = dict[str, Any]


class TracingMiddleware:
    """Plain ASGI: an HTTP request's SERVER span, continuing the caller's ``traceparent``;
    registered (first, outermost) only when tracing is on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope.get("method", ""), scope.get("path", "")
        route = scope.get("path_template") or path  # Litestar's route: names without ids
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        attributes = {"http.request.method": method, "http.route": route, "url.path": path}
        with server_span(f"{method} {route}", headers, attributes) as current:

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start" and current is not None:
                    status = int(message["status"])
                    current.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        from opentelemetry.trace import StatusCode

                        current.set_status(StatusCode.ERROR)
                await send(message)

            await self.app(scope, receive, sending)
