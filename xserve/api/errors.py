"""The one place where errors become HTTP answers: ``{"error", "code"}``."""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from xserve.errors import XServeError

__all__ = ["error_response", "exception_handlers"]

log = logging.getLogger(__name__)
AnyRequest = Request[Any, Any, Any]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


def _answer(status: int, message: str, code: str) -> Response[dict[str, str]]:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="xserve"'}
    if status in (408, 413):  # the rest of the body is not read: the connection cannot go on
        headers = {"Connection": "close"}
    return Response(
        {"error": message, "code": code},
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def error_response(exc: XServeError) -> Response[dict[str, str]]:
    """The answer to ``exc``, for code that answers itself rather than raise (middleware)."""
    if exc.status >= 500:
        log.error("%s: %s", exc.code, exc.message)
    return _answer(exc.status, exc.message, exc.code)


def _xserve_error(_: AnyRequest, exc: XServeError) -> Response[dict[str, str]]:
    return error_response(exc)


def _validation_error(_: AnyRequest, exc: ValidationException) -> Response[dict[str, str]]:
    # Litestar's own checks: query parameters (the caller's input: 422 naming the
    # parameter) or an undecodable body (400).
    extra = exc.extra if isinstance(exc.extra, list) else []
    # An empty body comes as {"key": "data", "source": "body"}: not a parameter.
    fields = [
        e for e in extra if isinstance(e, dict) and e.get("key") and e.get("source") != "body"
    ]
    if fields:
        message = "; ".join(f"{e['key']}: {e.get('message', 'invalid')}" for e in fields)
        return _answer(422, message, "invalid_input")
    detail = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in extra)
    return _answer(400, f"body: not valid JSON{': ' + detail if detail else ''}", "bad_request")


def _http_error(_: AnyRequest, exc: HTTPException) -> Response[dict[str, str]]:
    status = exc.status_code
    return _answer(status, str(exc.detail), _HTTP_CODES.get(status, "http_error"))


def _recursion(request: AnyRequest, exc: RecursionError) -> Response[dict[str, str]]:
    # msgspec's decoder refuses a body nested too deeply for it (controllers that read
    # bodies through JsonRequest refuse one deeper than MAX_DEPTH before decoding).
    if "deserializing" in str(exc):
        return _answer(400, f"body: JSON nested too deeply: {exc}", "invalid_json")
    return _unexpected(request, exc)


def _unexpected(_: AnyRequest, exc: Exception) -> Response[dict[str, str]]:
    log.exception("unhandled error", exc_info=exc)
    return _answer(500, f"internal error: {type(exc).__name__}", "internal_error")


exception_handlers: ExceptionHandlersMap = {
    XServeError: _xserve_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    RecursionError: _recursion,
    Exception: _unexpected,
}
