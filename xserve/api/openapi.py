"""What ``/docs/openapi.json`` declares beyond what Litestar reads from the handlers:
xserve's error body on every error status a route answers, bearer auth, and the request
bodies that handlers read raw (so that no request pays for a typed decode).

Routes name their answers with ``responses=answers(Success, 404, 422, ...)`` and their
bodies with ``operation_class=request_body(Struct, example)``; :func:`document` adds the
request bodies' schemas (msgspec's JSON Schema) to the components once the app exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar, Router
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Reference,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType

from xserve import __version__
from xserve.api.auth import PUBLIC_OPT
from xserve.api.schemas import ErrorBody

__all__ = [
    "BEARER",
    "answers",
    "document",
    "openapi_config",
    "request_body",
]

_SCHEME = "bearer"
BEARER: list[SecurityRequirement] = [{_SCHEME: []}]
"""The ``security=`` of every route that needs an API key (all but the public ones)."""

_REF = "#/components/schemas/{name}"
_request_types: list[type] = []
"""Every type a route's body is declared as (by :func:`request_body`)."""

_ERRORS = {
    400: "A request xserve cannot read: a body that is not JSON, or nested too deeply",
    401: "No API key, or an unknown one (only when the server has keys)",
    403: "The key lacks the role the route needs",
    404: "Unknown model, version, job, or the audit log is off",
    408: "The body arrived too slowly; the connection is closed",
    413: "The body (decompressed) or the work asked for is too large",
    415: "A Content-Encoding other than gzip or deflate",
    422: "Input or query parameters xserve refuses, named in the message",
    429: "Too many queued jobs; retry after Retry-After seconds",
    503: "Not ready (model loading, audit store or job queue unreachable); retry later",
}
AUTH = (401, 403)
BODY = (400, 408, 413, 415, 422)


def answers(
    success: Any | None, *errors: int, status: int = 200, description: str = "OK"
) -> dict[int, ResponseSpec]:
    """``responses=`` for a route: its success body (None: keep the one Litestar infers
    from the return annotation) and xserve's error body for each error status. Routes with
    parameters list 400: Litestar declares its own there, in its shape, unless replaced."""
    out = {
        code: ResponseSpec(ErrorBody, generate_examples=False, description=_ERRORS[code])
        for code in sorted(set(errors))
    }
    if success is not None:
        out[status] = ResponseSpec(success, generate_examples=False, description=description)
    return out


def _ref(schema_type: type) -> Reference:
    return Reference(ref=_REF.format(name=schema_type.__name__))


def request_body(schema_type: type, example: Any, binary: bool = False) -> type[Operation]:
    """The ``operation_class=`` of a route that reads its JSON body itself: the body is
    declared as ``schema_type`` (with ``example``), the handler's parsing stays its own.
    ``binary``: the body may also be the V2 binary tensor form, and so may the answer."""
    if schema_type not in _request_types:
        _request_types.append(schema_type)
    content = {"application/json": OpenAPIMediaType(schema=_ref(schema_type), example=example)}
    binary_form = OpenAPIMediaType(
        schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
        # The JSON header's length; the tensors follow it as raw little-endian bytes.
    )
    if binary:
        content["application/octet-stream"] = binary_form

    @dataclass
    class BodyOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(content=content, required=True)
            success = (self.responses or {}).get("200")
            if binary and isinstance(success, OpenAPIResponse) and success.content is not None:
                success.content["application/octet-stream"] = binary_form
                success.headers = {
                    "Inference-Header-Content-Length": OpenAPIHeader(
                        schema=Schema(type=OpenAPIType.INTEGER),
                        description="Binary answers: the length of the JSON header",
                    )
                }

    return BodyOperation


def openapi_config() -> OpenAPIConfig:
    """The document's configuration: served at ``/docs`` (no key needed), with bearer auth
    declared as a security scheme."""
    return OpenAPIConfig(
        title="xserve",
        version=__version__,
        description=(
            "Explainable model serving. Errors are always "
            '`{"error": "<message>", "code": "<machine_code>"}`. With API keys configured '
            "(XSERVE_API_KEYS), routes that declare bearer security need "
            "`Authorization: Bearer <key>` with the route's role."
        ),
        path="/docs",
        components=Components(
            security_schemes={
                _SCHEME: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="An API key from `xserve keys add`",
                )
            }
        ),
        openapi_router=Router("/docs", route_handlers=[], include_in_schema=False, opt=PUBLIC_OPT),
    )


def document(app: Litestar) -> None:
    """Add the schemas of the request bodies that routes read raw to ``app``'s document
    (Litestar knows only the types it decodes itself)."""
    _, components = msgspec.json.schema_components(_request_types, ref_template=_REF)
    schemas: dict[str, Any] = app.openapi_schema.components.schemas
    for name, schema in components.items():
        schemas.setdefault(name, schema)  # a JSON Schema object: the document holds it as is
