"""The Open Inference Protocol (KServe V2) REST API over the shared data plane."""

from __future__ import annotations

import functools
from typing import Any

import anyio.to_thread
from litestar import Controller, Request, Response, get, post

from xserve import __version__
from xserve.api.auth import PUBLIC_OPT, requires
from xserve.api.limits import OFF_LOOP_BYTES
from xserve.api.openapi import AUTH, BEARER, BODY, answers, request_body
from xserve.api.schemas import (
    INFER_EXAMPLE,
    InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
)
from xserve.api.schemas import (
    InferRequest as InferBody,
)
from xserve.api.v1 import MODEL_PATHS, SUBJECT
from xserve.api.v2_codec import (
    HEADER_LENGTH,
    InferRequest,
    decode_request,
    encode_response,
)
from xserve.errors import InvalidInput, PayloadTooLarge
from xserve.repository.version import ModelVersion
from xserve.serving.dataplane import DataPlane
from xserve.serving.request import DecisionRequest
from xserve.serving.v2_infer import check_outputs, metadata, outputs

__all__ = ["V2Controller"]

REQUEST_ID_HEADER = "X-Request-Id"
"""The decision's request id, as in its audit record (V2 bodies have no place for it)."""


def _listed(request: InferRequest, name: str) -> list[Any]:
    listed = request.listed.get(name)
    return listed if listed is not None else request.inputs[name].tolist()  # type: ignore[no-any-return]


def _too_many(n: int, max_rows: int) -> None:
    if n > max_rows:  # before listing them: 10 MB of tensors is a million Python floats
        raise PayloadTooLarge(f"instances: {n} given, at most {max_rows}")


def _rows(model: ModelVersion, request: InferRequest, max_rows: int) -> list[Any]:
    """One [n, features] tensor, or one [n] / [n, 1] tensor per feature by name."""
    tensors = request.inputs
    names = model.feature_names
    if len(tensors) == 1 and next(iter(tensors)) not in names:
        ((name, arr),) = tensors.items()
        if arr.ndim not in (1, 2) or arr.shape[-1] != len(names):
            raise InvalidInput(
                f"inputs.{name}: expected shape [n, {len(names)}] ({', '.join(names)}), "
                f"got {list(arr.shape)}"
            )
        _too_many(1 if arr.ndim == 1 else arr.shape[0], max_rows)
        return [_listed(request, name)] if arr.ndim == 1 else _listed(request, name)
    unknown = sorted(set(tensors) - set(names))
    if unknown:
        raise InvalidInput(f"inputs.{unknown[0]}: unknown feature")
    missing = [n for n in names if n not in tensors]
    if missing:
        raise InvalidInput(f"inputs.{missing[0]}: missing feature")
    for n in names:
        shape = tensors[n].shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidInput(f"inputs.{n}: expected shape [n] or [n, 1], got {list(shape)}")
    if len({tensors[n].shape[0] for n in names}) != 1:
        raise InvalidInput("inputs: every feature tensor must have the same length")
    _too_many(tensors[names[0]].shape[0], max_rows)
    # [n, 1] columns list as [[v], ...]: take each row's one value
    columns = [
        _listed(request, n) if tensors[n].ndim == 1 else [v[0] for v in _listed(request, n)]
        for n in names
    ]
    return [list(r) for r in zip(*columns, strict=True)]


def _decode_listed(raw: bytes, header_length: int | None, max_rows: int) -> InferRequest:
    """A large body decoded with its tensors listed as Python values, on a worker thread:
    millions of values must not stall the event loop (health probes, other requests)."""
    body = decode_request(raw, header_length)
    for name, arr in body.inputs.items():
        if arr.ndim and arr.shape[0] <= max_rows:
            body.listed[name] = arr.tolist()
    return body


def _header_length(request: Request[Any, Any, Any]) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    try:
        return int(value) if value is not None else None
    except ValueError:
        raise InvalidInput(f"{HEADER_LENGTH}: not an integer") from None


def _infer_request(
    model: str,
    version: str | None,
    body: InferRequest,
    caller: str | None,
    subject: str | None,
    max_rows: int,
) -> DecisionRequest:
    """The decision request of a V2 body: rows and outputs are checked against the version
    the data plane chooses."""
    explain = body.parameters.get("explain", False)
    if not isinstance(explain, bool):
        raise InvalidInput("parameters.explain: expected true or false")

    def rows_for(mv: ModelVersion) -> list[Any]:
        check_outputs(mv, body, explain)
        return _rows(mv, body, max_rows)

    return DecisionRequest(
        "infer",
        model,
        version,
        rows_for=rows_for,
        explain=explain,
        caller=caller,
        subject=subject if version is None else None,
        client_id=body.id,
    )


class V2Controller(Controller):
    path = "/v2"
    tags = ["v2 (Open Inference Protocol)"]

    @get("/", sync_to_thread=False, security=BEARER, responses=answers(V2ServerMetadata, *AUTH))
    def server_metadata(self) -> dict[str, Any]:
        return {"name": "xserve", "version": __version__, "extensions": ["binary_tensor_data"]}

    @get("/health/live", sync_to_thread=False, opt=PUBLIC_OPT, responses=answers(V2Live))
    def live(self) -> dict[str, bool]:
        return {"live": True}

    @get(
        "/health/ready",
        sync_to_thread=False,
        opt=PUBLIC_OPT,
        responses={
            **answers(V2Ready, description="Ready"),
            **answers(V2Ready, status=503, description="Not ready yet"),
        },
    )
    def ready(self, dataplane: DataPlane) -> Response[dict[str, bool]]:
        ok = dataplane.ready
        return Response({"ready": ok}, status_code=200 if ok else 503)

    @get(
        MODEL_PATHS,
        sync_to_thread=False,
        security=BEARER,
        responses=answers(V2ModelMetadata, 400, *AUTH, 404, 503),
    )
    def model_metadata(
        self, dataplane: DataPlane, model: str, version: str | None = None
    ) -> dict[str, Any]:
        return metadata(dataplane.model(model, version), dataplane.ready_versions(model))

    @get(
        [p + "/ready" for p in MODEL_PATHS],
        sync_to_thread=False,
        security=BEARER,
        responses=answers(V2ModelReady, 400, *AUTH, 404, 503),
    )
    def model_ready(
        self, dataplane: DataPlane, model: str, version: str | None = None
    ) -> dict[str, Any]:
        mv = dataplane.model(model, version)  # raises 404 / 503 when not ready
        return {"name": mv.name, "version": mv.version, "ready": True}

    @post(
        [p + "/infer" for p in MODEL_PATHS],
        status_code=200,
        opt=requires("predict"),
        security=BEARER,
        responses=answers(InferResponse, *AUTH, *BODY, 404, 503),
        operation_class=request_body(InferBody, INFER_EXAMPLE, binary=True),
    )
    async def infer(
        self,
        dataplane: DataPlane,
        request: Request[Any, Any, Any],
        model: str,
        caller: str | None,
        version: str | None = None,
        subject: str | None = SUBJECT,
    ) -> Response[bytes]:
        raw, max_rows = await request.body(), dataplane.settings.max_instances
        try:
            if len(raw) < OFF_LOOP_BYTES:
                body = decode_request(raw, _header_length(request))
            else:
                decode = functools.partial(_decode_listed, raw, _header_length(request), max_rows)
                body = await anyio.to_thread.run_sync(decode)
        except InvalidInput:
            dataplane.model(model, version)  # an unknown model is 404 whatever the body
            raise
        decision = _infer_request(model, version, body, caller, subject, max_rows)
        outcome = await dataplane.decide(decision)
        answer, prediction = outcome.answered(), outcome.prediction
        mv = outcome.model
        header = {"model_name": mv.name, "model_version": mv.version, "id": body.id or ""}
        tensors = outputs(prediction) if prediction is not None else []
        content, json_length = encode_response(header, tensors, body)
        headers = {REQUEST_ID_HEADER: answer.request_id}
        if json_length is None:
            return Response(content, media_type="application/json", headers=headers)
        headers[HEADER_LENGTH] = str(json_length)
        return Response(content, media_type="application/octet-stream", headers=headers)
