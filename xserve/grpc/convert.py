"""gRPC messages to and from the protocol-neutral V2 tensors (``xserve.serving.v2_tensors``).

Tensors come as typed contents (the repeated field of their datatype) or as
``raw_input_contents``; an answer uses the form its request used, as KServe's does.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np

from xserve.errors import InvalidInput
from xserve.grpc.proto import grpc_predict_v2_pb2 as pb
from xserve.serving.inputs import check_client_id
from xserve.serving.v2_tensors import (
    DATATYPES,
    InferRequest,
    OutputTensor,
    check_values,
    element_count,
    from_raw,
    to_raw,
)

__all__ = ["decode_request", "encode_metadata", "encode_response", "parameters"]

_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The typed contents field of each datatype; FP16 has none (raw contents only)."""

_NARROW = {"INT8", "INT16", "UINT8", "UINT16"}
"""Datatypes carried in a wider field: their values are checked to fit."""


def parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A parameters map as plain values (bool, int, float or str; None when unset)."""
    out: dict[str, Any] = {}
    for key, p in params.items():
        kind = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, kind) if kind is not None else None
    return out


def _set_parameters(
    target: MutableMapping[str, pb.InferParameter], values: Mapping[str, Any]
) -> None:
    for key, value in values.items():
        p = target[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = str(value)


def _typed(t: pb.ModelInferRequest.InferInputTensor, shape: list[int], where: str) -> Any:
    count = element_count(shape, where)
    field = _CONTENTS.get(t.datatype)
    if field is None:
        raise InvalidInput(f"{where}: {t.datatype} tensors travel only in raw_input_contents")
    values = getattr(t.contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"{where}.contents.{field}: shape {shape} has {count} elements, got {len(values)}"
        )
    if t.datatype == "BYTES":
        try:
            items = [v.decode() for v in values]
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{where}.contents.bytes_contents: not UTF-8: {exc}") from None
        return np.array(items, dtype=object).reshape(shape)
    data = list(values)
    if t.datatype in _NARROW:
        check_values(data, t.datatype, shape, f"inputs.{t.name}", where)
    return np.array(data, dtype=DATATYPES[t.datatype]).reshape(shape)


def decode_request(msg: pb.ModelInferRequest) -> tuple[InferRequest, bool]:
    """The request's tensors and parameters, and whether its tensors came raw."""
    if not msg.inputs:
        raise InvalidInput("inputs: expected a non-empty list of tensors")
    request_id = msg.id or None
    check_client_id(request_id)
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(
            f"raw_input_contents: {len(raw)} entries for {len(msg.inputs)} inputs (one each)"
        )
    inputs = {}
    for i, t in enumerate(msg.inputs):
        where = f"inputs[{i}]"
        if t.datatype != "BYTES" and t.datatype not in DATATYPES:
            raise InvalidInput(f"{where}.datatype: {t.datatype!r} is not a V2 datatype")
        shape = list(t.shape)
        if raw:
            if t.HasField("contents"):
                raise InvalidInput(f"{where}.contents: not allowed with raw_input_contents")
            tensor = from_raw(raw[i], t.datatype, shape, where)
        else:
            tensor = _typed(t, shape, where)
        if t.name in inputs:
            raise InvalidInput(f"{where}: duplicate input name {t.name!r}")
        inputs[t.name] = tensor
    outputs = [{"name": o.name, "parameters": parameters(o.parameters)} for o in msg.outputs]
    return InferRequest(request_id, inputs, parameters(msg.parameters), outputs or None), bool(raw)


def _fill(contents: pb.InferTensorContents, t: OutputTensor) -> None:
    values = t.data.ravel().tolist()
    if t.datatype == "BYTES":
        contents.bytes_contents.extend(str(v).encode() for v in values)
    else:
        getattr(contents, _CONTENTS[t.datatype]).extend(values)


def encode_response(
    header: Mapping[str, str],
    tensors: list[OutputTensor],
    request: InferRequest,
    raw: bool,
    request_id: str,
) -> pb.ModelInferResponse:
    """The answer: the outputs asked for (all by default), raw when the inputs came raw;
    ``request_id`` (the decision's, as in its audit record) in ``parameters``."""
    wanted = {o["name"] for o in request.outputs} if request.outputs else None
    response = pb.ModelInferResponse(
        model_name=header["model_name"], model_version=header["model_version"], id=header["id"]
    )
    response.parameters["request_id"].string_param = request_id
    for t in tensors:
        if wanted is not None and t.name not in wanted:
            continue
        out = response.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.data.shape))
        _set_parameters(out.parameters, t.parameters)
        if raw:
            response.raw_output_contents.append(to_raw(t))
        else:
            _fill(out.contents, t)
    return response


def encode_metadata(meta: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    """A version's V2 metadata (``xserve.serving.v2_infer.metadata``) as its message."""

    def tensor(spec: Mapping[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
        return pb.ModelMetadataResponse.TensorMetadata(
            name=spec["name"], datatype=spec["datatype"], shape=spec["shape"]
        )

    return pb.ModelMetadataResponse(
        name=meta["name"],
        versions=meta["versions"],
        platform=meta["platform"],
        inputs=[tensor(s) for s in meta["inputs"]],
        outputs=[tensor(s) for s in meta["outputs"]],
    )
