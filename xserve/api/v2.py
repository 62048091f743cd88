"""The Open Inference Protocol (KServe V2) REST API over the shared data plane."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import numpy as np
from litestar import Controller, Request, Response, get, post

from xserve import __version__
from xserve.api.v2_codec import HEADER_LENGTH, InferRequest, OutputTensor, decode_request, encode_response
from xserve.dataplane import DataPlane, Prediction
from xserve.errors import InvalidInput
from xserve.repository.version import ModelVersion
from xserve.runtimes.base import Matrix

__all__ = ["V2Controller"]

MATRIX_INPUT = "input-0"


def _rows(model: ModelVersion, request: InferRequest) -> list[Any]:
    """One [n, features] tensor, or one [n] / [n, 1] tensor per feature by name."""
    tensors = request.inputs
    names = model.feature_names
    if len(tensors) == 1:
        (arr,) = tensors.values()
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2:
            raise InvalidInput(f"inputs: expected shape [n, {len(names)}], got {list(arr.shape)}")
        return arr.tolist()  # type: ignore[no-any-return]
    unknown = sorted(set(tensors) - set(names))
    if unknown:
        raise InvalidInput(f"inputs.{unknown[0]}: unknown feature")
    missing = [n for n in names if n not in tensors]
    if missing:
        raise InvalidInput(f"inputs.{missing[0]}: missing feature")
    columns = [tensors[n].reshape(-1) for n in names]
    if len({len(c) for c in columns}) != 1:
        raise InvalidInput("inputs: every feature tensor must have the same length")
    return [list(r) for r in zip(*(c.tolist() for c in columns), strict=True)]


def _outputs(prediction: Prediction) -> list[OutputTensor]:
    labels = prediction.labels
    if prediction.model.task == "regression":
        return [OutputTensor("predict", np.asarray(labels, dtype=np.float64), "FP64")]
    integral = all(isinstance(v, int) and not isinstance(v, bool) for v in labels)
    label_tensor = (
        OutputTensor("predict", np.asarray(labels, dtype=np.int64), "INT64")
        if integral
        else OutputTensor("predict", np.asarray(labels, dtype=object), "BYTES")
    )
    return [label_tensor, OutputTensor("probabilities", prediction.outputs, "FP64")]


def _metadata(model: ModelVersion, versions: list[str]) -> dict[str, Any]:
    n = len(model.features)
    outputs = [{"name": "predict", "datatype": "FP64" if model.task == "regression" else "INT64",
                "shape": [-1]}]
    if model.task == "classification":
        outputs.append({"name": "probabilities", "datatype": "FP64", "shape": [-1, len(model.classes or [])]})
    return {
        "name": model.name,
        "versions": versions,
        "platform": model.flavor,
        "inputs": [{"name": MATRIX_INPUT, "datatype": "FP64", "shape": [-1, n]}],
        "outputs": outputs,
        "parameters": {"features": model.feature_names, "classes": model.classes, "task": model.task},
    }


class V2Controller(Controller):
    path = "/v2"
    tags = ["v2 (Open Inference Protocol)"]

    @get("/", sync_to_thread=False)
    def server_metadata(self) -> dict[str, Any]:
        return {"name": "xserve", "version": __version__, "extensions": ["binary_tensor_data"]}

    @get("/health/live", sync_to_thread=False)
    def live(self) -> dict[str, bool]:
        return {"live": True}

    @get("/health/ready", sync_to_thread=False)
    def ready(self, dataplane: DataPlane) -> Response[dict[str, bool]]:
        ok = dataplane.repository.scanned
        return Response({"ready": ok}, status_code=200 if ok else 503)

    @get(["/models/{model:str}", "/models/{model:str}/versions/{version:str}"], sync_to_thread=False)
    def model_metadata(self, dataplane: DataPlane, model: str, version: str | None = None) -> dict[str, Any]:
        mv = dataplane.model(model, version)
        ready = [e.version for e in dataplane.repository.versions(model) if e.model is not None]
        return _metadata(mv, ready)

    @get(["/models/{model:str}/ready", "/models/{model:str}/versions/{version:str}/ready"],
         sync_to_thread=False)
    def model_ready(self, dataplane: DataPlane, model: str, version: str | None = None) -> dict[str, Any]:
        mv = dataplane.model(model, version)  # raises 404 / 503 when not ready
        return {"name": mv.name, "version": mv.version, "ready": True}

    @post(["/models/{model:str}/infer", "/models/{model:str}/versions/{version:str}/infer"],
          status_code=200)
    async def infer(
        self, dataplane: DataPlane, request: Request[Any, Any, Any], model: str, version: str | None = None
    ) -> Response[bytes]:
        body = await request.body()
        header_length = request.headers.get(HEADER_LENGTH)
        try:
            length = int(header_length) if header_length is not None else None
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH}: not an integer") from None
        infer_request = decode_request(body, length)
        mv = dataplane.model(model, version)
        x: Matrix = dataplane.matrix(mv, _rows(mv, infer_request))
        prediction = await anyio.to_thread.run_sync(dataplane.predict_matrix, mv, x)
        header = {"model_name": mv.name, "model_version": mv.version, "id": infer_request.id or ""}
        content, json_length = encode_response(header, _outputs(prediction), infer_request)
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(json_length)},
        )
