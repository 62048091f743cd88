"""The Open Inference Protocol (KServe V2) REST API over the shared data plane."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from litestar import Controller, Request, Response, get, post

from xserve import __version__
from xserve.api.v1 import SUBJECT
from xserve.api.v2_codec import (
    HEADER_LENGTH,
    InferRequest,
    OutputTensor,
    decode_request,
    encode_response,
)
from xserve.errors import InvalidInput
from xserve.repository.version import ModelVersion
from xserve.runtimes.base import Matrix
from xserve.serving.dataplane import DataPlane, Prediction
from xserve.serving.decision import new_request_id

__all__ = ["V2Controller"]

MATRIX_INPUT = "input-0"
PREDICT_OUTPUT = "predict"
PROBABILITIES_OUTPUT = "probabilities"
ATTRIBUTIONS_OUTPUT = "attributions"
BASE_VALUES_OUTPUT = "base_values"
REQUEST_ID_HEADER = "X-Request-Id"
"""The decision's request id, as in its audit record (V2 bodies have no place for it)."""


def _rows(model: ModelVersion, request: InferRequest) -> list[Any]:
    """One [n, features] tensor, or one [n] / [n, 1] tensor per feature by name."""
    tensors = request.inputs
    names = model.feature_names
    if len(tensors) == 1 and next(iter(tensors)) not in names:
        ((name, arr),) = tensors.items()
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != len(names):
            raise InvalidInput(
                f"inputs.{name}: expected shape [n, {len(names)}] ({', '.join(names)}), "
                f"got {list(arr.shape)}"
            )
        return arr.tolist()  # type: ignore[no-any-return]
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
    columns = [tensors[n].reshape(-1) for n in names]
    if len({len(c) for c in columns}) != 1:
        raise InvalidInput("inputs: every feature tensor must have the same length")
    return [list(r) for r in zip(*(c.tolist() for c in columns), strict=True)]


def _label_datatype(model: ModelVersion) -> str:
    """FP64 values, INT64 class indices or integer labels, or BYTES for other labels."""
    if model.task == "regression":
        return "FP64"
    classes = model.classes or []
    integral = all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
    return "INT64" if integral else "BYTES"


def _output_specs(model: ModelVersion) -> list[dict[str, Any]]:
    specs = [{"name": PREDICT_OUTPUT, "datatype": _label_datatype(model), "shape": [-1]}]
    if model.task == "classification":
        n = len(model.classes) if model.classes else -1
        specs.append({"name": PROBABILITIES_OUTPUT, "datatype": "FP64", "shape": [-1, n]})
    return specs


def _wants_explanation(model: ModelVersion, request: InferRequest) -> bool:
    """``parameters.explain``, after checking that the requested outputs exist."""
    explain = request.parameters.get("explain", False)
    if not isinstance(explain, bool):
        raise InvalidInput("parameters.explain: expected true or false")
    known = [o["name"] for o in _output_specs(model)]
    if explain:
        known += [ATTRIBUTIONS_OUTPUT, BASE_VALUES_OUTPUT]
    for o in request.outputs or []:
        if o["name"] not in known:
            raise InvalidInput(f"outputs.{o['name']}: unknown output; this request has {known}")
    return explain


def _explanation(prediction: Prediction) -> list[OutputTensor]:
    """Each row's attributions [n, features] and base value [n], for its predicted class."""
    a = prediction.attribution
    if a is None:
        return []
    rows = np.arange(len(prediction.outputs))
    chosen = np.asarray(prediction.explained_outputs(None))
    params = {"method": a.method, "output": a.output}
    return [
        OutputTensor(ATTRIBUTIONS_OUTPUT, a.values[rows, :, chosen], "FP64", params),
        OutputTensor(BASE_VALUES_OUTPUT, a.base[rows, chosen], "FP64", params),
    ]


def _outputs(prediction: Prediction) -> list[OutputTensor]:
    datatype = _label_datatype(prediction.model)
    dtype = {"FP64": np.float64, "INT64": np.int64, "BYTES": object}[datatype]
    labels = OutputTensor(PREDICT_OUTPUT, np.asarray(prediction.labels, dtype=dtype), datatype)
    outputs = [labels]
    if prediction.model.task == "classification":
        outputs.append(OutputTensor(PROBABILITIES_OUTPUT, prediction.outputs, "FP64"))
    return outputs + _explanation(prediction)


def _answer(
    model: ModelVersion, request_id: str, client_id: str | None, prediction: Prediction
) -> dict[str, Any]:
    """The decision as recorded, in the v1 answer's shape."""
    answer: dict[str, Any] = {
        "model": model.name,
        "version": model.version,
        "request_id": request_id,
        **prediction.to_dict(),
    }
    if client_id:
        answer["id"] = client_id
    return answer


def _metadata(model: ModelVersion, versions: list[str]) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": versions,
        "platform": model.flavor,
        "inputs": [{"name": MATRIX_INPUT, "datatype": "FP64", "shape": [-1, len(model.features)]}],
        "outputs": _output_specs(model),
        "parameters": {
            "features": model.feature_names,
            "classes": model.classes,
            "task": model.task,
        },
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

    @get(
        ["/models/{model:str}", "/models/{model:str}/versions/{version:str}"], sync_to_thread=False
    )
    def model_metadata(
        self, dataplane: DataPlane, model: str, version: str | None = None
    ) -> dict[str, Any]:
        mv = dataplane.model(model, version)
        ready = [e.version for e in dataplane.repository.versions(model) if e.model is not None]
        return _metadata(mv, ready)

    @get(
        ["/models/{model:str}/ready", "/models/{model:str}/versions/{version:str}/ready"],
        sync_to_thread=False,
    )
    def model_ready(
        self, dataplane: DataPlane, model: str, version: str | None = None
    ) -> dict[str, Any]:
        mv = dataplane.model(model, version)  # raises 404 / 503 when not ready
        return {"name": mv.name, "version": mv.version, "ready": True}

    @post(
        ["/models/{model:str}/infer", "/models/{model:str}/versions/{version:str}/infer"],
        status_code=200,
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
        # An unknown model is 404 whatever the body; without a version the policy chooses.
        mv = dataplane.route(model, version, subject)
        body = await request.body()
        header_length = request.headers.get(HEADER_LENGTH)
        try:
            length = int(header_length) if header_length is not None else None
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH}: not an integer") from None
        infer_request = decode_request(body, length)
        explain = _wants_explanation(mv, infer_request)
        x: Matrix = dataplane.matrix(mv, _rows(mv, infer_request))
        request_id = new_request_id()
        answer = partial(_answer, mv, request_id, infer_request.id)
        decided = await dataplane.decide("infer", mv, x, explain, answer, request_id, caller)
        prediction = decided.prediction
        if version is None:  # live traffic: the model's shadow version gets a copy
            dataplane.shadows.offer(mv, x, prediction.labels, request_id, caller, explain)
        header = {"model_name": mv.name, "model_version": mv.version, "id": infer_request.id or ""}
        content, json_length = encode_response(header, _outputs(prediction), infer_request)
        if json_length is None:
            return Response(
                content, media_type="application/json", headers={REQUEST_ID_HEADER: request_id}
            )
        return Response(
            content,
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(json_length), REQUEST_ID_HEADER: request_id},
        )
