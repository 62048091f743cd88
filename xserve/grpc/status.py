"""xserve's errors as gRPC status codes: the same message as over HTTP, and xserve's error
code in the ``xserve-error-code`` trailing metadata."""

from __future__ import annotations

import grpc

from xserve.errors import XServeError

__all__ = ["ERROR_CODE_KEY", "status_of"]

ERROR_CODE_KEY = "xserve-error-code"
"""Trailing metadata naming xserve's error code (``invalid_input``, ``model_not_found``...)."""

_BY_HTTP_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    # gRPC's own answer to a message over the size limit: too many rows is the same kind
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def status_of(exc: XServeError) -> grpc.StatusCode:
    """The status code of ``exc`` (INTERNAL for every other server error)."""
    code = _BY_HTTP_STATUS.get(exc.status)
    if code is not None:
        return code
    return grpc.StatusCode.INTERNAL if exc.status >= 500 else grpc.StatusCode.UNKNOWN
