"""Bounds on what one connection can make the server hold: how long a body may take to
arrive, how large it may grow when decompressed, how large and how slow the headers may
be.

:class:`BodyLimits` (ASGI, in the app) wraps ``receive`` of requests with a body: the
body must arrive within ``XSERVE_BODY_TIMEOUT`` seconds plus one second per
``XSERVE_BODY_MIN_RATE`` bytes received (a slowloris body gets 408 and its connection
closed), and a ``Content-Encoding: gzip`` or ``deflate`` body is decompressed as it
arrives, refused with 413 past ``XSERVE_MAX_BODY_BYTES`` decompressed (no zip bomb);
any other encoding gets 415.

Headers are read by uvicorn before the app sees anything: :func:`uvicorn_limits` gives
the keyword arguments for ``uvicorn.run`` whose protocol bounds their size and time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import zlib
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from xserve.errors import PayloadTooLarge, XServeError
from xserve.settings import Settings

__all__ = [
    "HEADER_TIMEOUT",
    "MAX_HEADER_BYTES",
    "OFF_LOOP_BYTES",
    "BadEncoding",
    "BodyLimits",
    "BodyTimeout",
    "BoundedHttpTools",
    "UnsupportedEncoding",
    "uvicorn_limits",
]

MAX_HEADER_BYTES = 32 * 1024
"""Default bound on a request's line and headers (h11's own default is 16 KiB)."""

HEADER_TIMEOUT = 10.0
"""Default seconds from a request's first byte to the end of its headers."""

OFF_LOOP_BYTES = 64 * 1024
"""Bodies this large are decoded on a worker thread, not on the event loop."""

SWEEP_INTERVAL = 0.25
"""Seconds between checks of the bodies being read against their deadlines."""

_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


class BodyTimeout(XServeError):
    """The body arrived too slowly: the connection is closed."""

    status = 408
    code = "body_timeout"


class UnsupportedEncoding(XServeError):
    status = 415
    code = "unsupported_encoding"


class BadEncoding(XServeError):
    """A gzip or deflate body that does not decompress."""

    status = 400
    code = "bad_encoding"


def _decompressor(encoding: bytes, first: bytes) -> Any:
    if encoding in (b"gzip", b"x-gzip"):
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    # "deflate" is the zlib format (RFC 9110); some clients send raw deflate: tell by the
    # zlib header (CM 8, header checksum a multiple of 31).
    zlib_header = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
    return zlib.decompressobj(wbits=zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)


class _Inflater:
    """Decompresses a body chunk by chunk, never holding more than ``limit`` bytes of
    output (plus one chunk of input)."""

    def __init__(self, encoding: bytes, limit: int) -> None:
        self.encoding = encoding
        self.limit = limit
        self.total = 0
        self.decoder: Any = None

    def feed(self, data: bytes, last: bool) -> bytes:
        out = []
        try:
            while data:
                if self.decoder is None or self.decoder.eof:  # a new gzip member
                    self.decoder = _decompressor(self.encoding, data)
                piece = self.decoder.decompress(data, self.limit - self.total + 1)
                self.total += len(piece)
                if self.total > self.limit or self.decoder.unconsumed_tail:
                    raise PayloadTooLarge(
                        f"body: more than {self.limit} bytes once decompressed "
                        "(XSERVE_MAX_BODY_BYTES)"
                    )
                out.append(piece)
                data = self.decoder.unused_data if self.decoder.eof else b""
        except zlib.error as exc:
            raise BadEncoding(f"body: not valid {self.encoding.decode()} data: {exc}") from None
        if last and (self.decoder is None or not self.decoder.eof):
            raise BadEncoding(f"body: the {self.encoding.decode()} stream is incomplete")
        return b"".join(out)


class BodyLimits:
    """The body deadline and decompression, for requests with a body (ASGI middleware:
    ``DefineMiddleware(BodyLimits, settings=...)``)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.timeout = settings.body_timeout
        self.min_rate = settings.body_min_rate
        self.max_body = settings.max_body_bytes
        self._active: set[_Body] = set()
        self._sweeping = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] in _NO_BODY:
            await self.app(scope, receive, send)
            return
        encoding = None
        for name, value in scope["headers"]:
            if name == b"content-encoding":
                encoding = value.strip().lower()
        inflater = None
        if encoding is not None and encoding != b"identity":
            if encoding not in (b"gzip", b"x-gzip", b"deflate"):
                raise UnsupportedEncoding(
                    f"Content-Encoding {encoding.decode('latin-1')!r}: "
                    "only gzip and deflate are accepted"
                )
            inflater = _Inflater(encoding, self.max_body)
            # What the app reads is the decompressed body: its encoding and length are gone.
            gone = (b"content-encoding", b"content-length")
            scope["headers"] = [(n, v) for n, v in scope["headers"] if n not in gone]
        body = _Body(receive, inflater, self.timeout, self.min_rate)
        self._active.add(body)
        if not self._sweeping:
            self._sweeping = True
            body.loop.call_later(SWEEP_INTERVAL, self._sweep)
        try:
            await self.app(scope, body.receive, send)
        finally:
            self._active.discard(body)

    def _sweep(self) -> None:
        """Every SWEEP_INTERVAL while bodies are being read: time out the late ones (one
        timer for all requests: a timer per request would cost every predict microseconds)."""
        if not self._active:
            self._sweeping = False
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for body in list(self._active):
            body.check(now)
        loop.call_later(SWEEP_INTERVAL, self._sweep)


class _Body:
    """One request's body as the app receives it: inflated when compressed, and bounded in
    time. The deadline moves on by a second per ``min_rate`` bytes received; when it has
    passed while the app waits for the body, the waiting task is cancelled and gets
    :class:`BodyTimeout`."""

    __slots__ = (
        "_receive",
        "deadline",
        "done",
        "expired",
        "inflater",
        "loop",
        "min_rate",
        "received",
        "started",
        "task",
        "waiting",
    )

    def __init__(
        self, receive: Receive, inflater: _Inflater | None, timeout: float, min_rate: float
    ) -> None:
        self._receive, self.inflater, self.min_rate = receive, inflater, min_rate
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.started = self.loop.time()
        self.deadline = self.started + timeout
        self.received = 0
        self.waiting = self.expired = self.done = False

    def check(self, now: float) -> None:
        if self.done or now < self.deadline:
            return
        self.expired = True
        if self.waiting and self.task is not None:
            self.task.cancel()

    def _timeout(self) -> BodyTimeout:
        return BodyTimeout(
            f"body: {self.received} bytes in {self.loop.time() - self.started:.1f} s, slower "
            "than allowed (XSERVE_BODY_TIMEOUT, XSERVE_BODY_MIN_RATE)"
        )

    async def receive(self) -> ReceiveMessage:
        if self.expired:
            raise self._timeout()
        self.waiting = True
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if self.expired and self.task is not None and self.task.uncancel() == 0:
                raise self._timeout() from None  # our cancellation, no one else's
            raise
        finally:
            self.waiting = False
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            self.received += len(chunk)
            self.deadline += len(chunk) / self.min_rate
            last = not message.get("more_body", False)
            self.done = last
            if self.inflater is not None:
                message["body"] = self.inflater.feed(chunk, last)
        else:  # disconnected
            self.done = True
        return message


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded headers: a request whose line and
    headers exceed ``max_header_bytes``, or are not complete ``header_timeout`` seconds
    after its first byte, gets 431 or 408 and the connection is closed (uvicorn bounds
    neither for httptools, so a client could hold a connection for ever)."""

    def __init__(
        self,
        *args: Any,
        max_header_bytes: int = MAX_HEADER_BYTES,
        header_timeout: float = HEADER_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout
        self._in_message = False
        self._in_headers = False
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if not self._in_message and not self._in_headers:  # a request's first bytes
            self._begin_headers()
        if self._in_headers:
            # Counted before parsing, up to the headers' end: whole headers in one read
            # would otherwise be parsed (and accepted) before they were ever counted.
            end = data.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end + 4
            if self._header_bytes > self.max_header_bytes:
                too_large = f"headers: over {self.max_header_bytes} bytes"
                self._refuse(431, "headers_too_large", too_large)
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = True
        if not self._in_headers:  # pipelined after another in the same read
            self._begin_headers()

    def on_headers_complete(self) -> None:
        self._end_headers()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_headers()
        super().connection_lost(exc)

    def _begin_headers(self) -> None:
        self._in_headers, self._header_bytes = True, 0
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _end_headers(self) -> None:
        self._in_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._in_headers:
            self._refuse(408, "header_timeout", f"headers: not complete in {self.header_timeout} s")

    def send_400_response(self, msg: str) -> None:
        """A request uvicorn cannot parse gets xserve's error body too, not plain text."""
        self._refuse(400, "bad_request", msg)

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._end_headers()
        if self.transport.is_closing():
            return
        body = json.dumps({"error": message, "code": code}).encode()
        reason = {
            400: b"Bad Request",
            408: b"Request Timeout",
            431: b"Request Header Fields Too Large",
        }[status]
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n" % (status, reason)
        head += b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        self.transport.write(head + body)
        self.transport.close()


def uvicorn_limits(settings: Settings | None = None) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``: the header-bounded httptools protocol (a
    partial: picklable for worker processes) with ``XSERVE_MAX_HEADER_BYTES`` and
    ``XSERVE_HEADER_TIMEOUT``, and h11's buffer bound for anyone who picks h11 instead."""
    settings = settings or Settings()
    protocol = functools.partial(
        BoundedHttpTools,
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout,
    )
    return {"http": protocol, "h11_max_incomplete_event_size": settings.max_header_bytes}
