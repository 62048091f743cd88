"""The one place where errors become HTTP answers: ``{"error", "code"}``."""

from __future__ import annotations

import logging

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from xserve.errors import XServeError

__all__ = ["exception_handlers"]

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


def _answer(status: int, message: str, code: str) -> Response[dict[str, str]]:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return Response(
        {"error": message, "code": code},
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _xserve_error(_: Request[object, object, object], exc: XServeError) -> Response[dict[str, str]]:
    if exc.status >= 500:
        log.error("%s: %s", exc.code, exc.message)
    return _answer(exc.status, exc.message, exc.code)


def _http_error(_: Request[object, object, object], exc: HTTPException) -> Response[dict[str, str]]:
    status = exc.status_code
    message = str(exc.detail)
    extra = getattr(exc, "extra", None)
    if status == 400 and extra:
        message = f"{message}: {extra}"
    return _answer(status, message, _HTTP_CODES.get(status, "http_error"))


def _unexpected(_: Request[object, object, object], exc: Exception) -> Response[dict[str, str]]:
    log.exception("unhandled error", exc_info=exc)
    return _answer(500, f"internal error: {type(exc).__name__}", "internal_error")


exception_handlers: ExceptionHandlersMap = {
    XServeError: _xserve_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
