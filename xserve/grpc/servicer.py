"""``inference.GRPCInferenceService`` over the shared data plane: the same routing, traffic
policies, shadows, audit records, keys and errors as the REST V2 routes."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import anyio.to_thread
import grpc

from xserve import __version__
from xserve.api.limits import OFF_LOOP_BYTES
from xserve.errors import InvalidInput, ModelNotReady, XServeError
from xserve.grpc.auth import ANY_ROLE, KeyCheck
from xserve.grpc.convert import decode_request, encode_metadata, encode_response
from xserve.grpc.proto import grpc_predict_v2_pb2 as pb
from xserve.grpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceServicer
from xserve.grpc.status import ERROR_CODE_KEY, status_of
from xserve.monitoring import metrics
from xserve.serving.dataplane import DataPlane
from xserve.serving.v2_infer import infer_request, metadata, outputs
from xserve.tracing import server_span

__all__ = ["REQUEST_ID_KEY", "SUBJECT_KEY", "InferenceServicer"]

log = logging.getLogger("xserve")

T = TypeVar("T")
Context = Any
"""``grpc.aio.ServicerContext`` (grpcio ships no type hints)."""

REQUEST_ID_KEY = "x-request-id"
"""Initial metadata: the decision's request id, as in its audit record (HTTP's header)."""
SUBJECT_KEY = "x-subject-id"
"""Request metadata: whom the decision is about, for sticky traffic splits (HTTP's
``X-Subject-Id``)."""


def _value(metadata: Iterable[Any] | None, name: str) -> str | None:
    for key, value in metadata or ():
        if key == name:
            return str(value)
    return None


async def _answer(context: Context, method: str, work: Callable[[], Awaitable[T]]) -> T:
    """``work``'s result, or the call aborted with the status and message of its error.

    Counted in ``xserve_requests`` as HTTP requests are, with the method's name as the
    endpoint and the HTTP status of the same answer (200, 404...) as the status."""
    # The caller's W3C `traceparent` metadata, when tracing is on.
    with server_span(f"inference.GRPCInferenceService/{method}", context.invocation_metadata()):
        return await _answered(context, method, work)


async def _answered(context: Context, method: str, work: Callable[[], Awaitable[T]]) -> T:
    labels = metrics.RequestLabels()
    token = metrics.current_request.set(labels)  # the data plane names model and version
    status, started = 500, time.perf_counter()
    try:
        result = await work()
        status = 200
        return result
    except XServeError as exc:
        status = exc.status
        if exc.status >= 500:
            log.error("%s: %s", exc.code, exc.message)
        await context.abort(
            status_of(exc), exc.message, trailing_metadata=((ERROR_CODE_KEY, exc.code),)
        )
        raise  # not reached: abort raises
    except Exception as exc:
        log.exception("unhandled error", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")
        raise
    finally:
        metrics.current_request.reset(token)
        elapsed = time.perf_counter() - started
        metrics.observe_request(labels.model, labels.version, method, status, elapsed)


class InferenceServicer(GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, dataplane: DataPlane, keys: KeyCheck) -> None:
        self.dataplane = dataplane
        self.keys = keys

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        async def work() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await _answer(context, "ServerLive", work)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        async def work() -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.dataplane.ready)

        return await _answer(context, "ServerReady", work)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        async def work() -> pb.ServerMetadataResponse:
            self.keys.caller(context.invocation_metadata(), ANY_ROLE)
            return pb.ServerMetadataResponse(name="xserve", version=__version__)

        return await _answer(context, "ServerMetadata", work)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        async def work() -> pb.ModelReadyResponse:
            self.keys.caller(context.invocation_metadata(), ANY_ROLE)
            try:
                mv = self.dataplane.model(request.name, request.version or None)
            except ModelNotReady:  # known, loading or failed: not ready (unknown: NOT_FOUND)
                return pb.ModelReadyResponse(ready=False)
            metrics.note_model(mv.name, mv.version)
            return pb.ModelReadyResponse(ready=True)

        return await _answer(context, "ModelReady", work)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        async def work() -> pb.ModelMetadataResponse:
            self.keys.caller(context.invocation_metadata(), ANY_ROLE)
            mv = self.dataplane.model(request.name, request.version or None)
            metrics.note_model(mv.name, mv.version)
            return encode_metadata(metadata(mv, self.dataplane.ready_versions(request.name)))

        return await _answer(context, "ModelMetadata", work)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> Any:
        async def work() -> pb.ModelInferResponse:
            md = context.invocation_metadata()
            principal = self.keys.caller(md, "predict")
            model, version = request.model_name, request.model_version or None
            try:
                if request.ByteSize() < OFF_LOOP_BYTES:
                    body, raw = decode_request(request)
                else:  # millions of values must not stall the event loop (probes, calls)
                    body, raw = await anyio.to_thread.run_sync(decode_request, request)
            except InvalidInput:
                self.dataplane.model(model, version)  # an unknown model is NOT_FOUND whatever
                raise
            caller = principal.name if principal is not None else None
            decision = infer_request(model, version, body, caller, _value(md, SUBJECT_KEY))
            outcome = await self.dataplane.decide(decision)
            answer, prediction, mv = outcome.answered(), outcome.prediction, outcome.model
            header = {"model_name": mv.name, "model_version": mv.version, "id": body.id or ""}
            tensors = outputs(prediction) if prediction is not None else []
            await context.send_initial_metadata(((REQUEST_ID_KEY, answer.request_id),))
            return encode_response(header, tensors, body, raw, answer.request_id)

        return await _answer(context, "ModelInfer", work)
