"""Open Inference Protocol (KServe V2) REST bodies: JSON and the binary tensor extension
(the tensors themselves, their datatypes and checks, are :mod:`xserve.serving.v2_tensors`).

Standard clients (tritonclient among them) send and ask for tensors as raw
bytes after a JSON header whose length is in ``Inference-Header-Content-Length``;
both forms are read and written here, with no web framework involved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from xserve.errors import InvalidInput
from xserve.serving.inputs import check_client_id, check_depth
from xserve.serving.v2_tensors import (
    DATATYPES,
    OutputTensor,
    check_values,
    decode_bytes,
    to_raw,
)
from xserve.serving.v2_tensors import InferRequest as V2Request

__all__ = ["HEADER_LENGTH", "InferRequest", "OutputTensor", "decode_request", "encode_response"]

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class InferRequest(V2Request):
    listed: dict[str, list[Any]] = field(default_factory=dict)
    """Inputs already turned into Python lists (large bodies: off the event loop)."""


def _tensor(spec: Any, binary: memoryview | None, where: str) -> npt.NDArray[Any]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidInput(f"{where}: expected an object with name, shape, datatype, data")
    shape, dtype = spec.get("shape"), spec.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput(f"{where}.shape: expected a list of non-negative integers")
    if dtype != "BYTES" and dtype not in DATATYPES:
        raise InvalidInput(f"{where}.datatype: {dtype!r} is not a V2 datatype")
    try:
        if binary is not None:
            if dtype == "BYTES":
                arr: npt.NDArray[Any] = np.array(decode_bytes(bytes(binary), where), dtype=object)
            else:
                arr = np.frombuffer(binary, dtype=DATATYPES[dtype])
        else:
            data = spec.get("data")
            if data is None:
                raise InvalidInput(f"{where}.data: missing")
            arr = np.array(data, dtype=object).reshape(shape)
            if dtype != "BYTES":
                values = arr.ravel().tolist()
                check_values(values, dtype, shape, f"inputs.{spec['name']}", where)
                arr = np.array(values, dtype=DATATYPES[dtype]).reshape(shape)
        return arr.reshape(shape)
    except ValueError as exc:
        raise InvalidInput(f"{where}: data does not fit shape {shape}: {exc}") from None


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected an object")
    return value


def _binary_size(spec: Any, where: str) -> int | None:
    if not isinstance(spec, dict):
        return None  # reported by _tensor
    size = _object(spec.get("parameters"), f"{where}.parameters").get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise InvalidInput(f"{where}.parameters.binary_data_size: expected a non-negative integer")
    return size


def _requested_outputs(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("outputs: expected a list of {name, parameters?} objects")
    for i, spec in enumerate(value):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidInput(f"outputs[{i}]: expected an object with a name")
        _object(spec.get("parameters"), f"outputs[{i}].parameters")
    return value or None


def decode_request(body: bytes, header_length: int | None) -> InferRequest:
    if header_length is not None and not 0 <= header_length <= len(body):
        raise InvalidInput(f"{HEADER_LENGTH}: {header_length} is outside the body")
    head = body[:header_length] if header_length is not None else body
    check_depth(head)
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"body: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise InvalidInput("inputs: expected a non-empty list of tensors")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("id: expected a string")
    check_client_id(request_id)
    view, pos = memoryview(body), header_length or 0
    inputs = {}
    for i, spec in enumerate(doc["inputs"]):
        where = f"inputs[{i}]"
        size = _binary_size(spec, where)
        chunk = None
        if size is not None:
            if header_length is None or pos + size > len(body):
                raise InvalidInput(f"{where}: binary_data_size exceeds the body")
            chunk, pos = view[pos : pos + size], pos + size
        tensor = _tensor(spec, chunk, where)
        if spec["name"] in inputs:
            raise InvalidInput(f"{where}: duplicate input name {spec['name']!r}")
        inputs[spec["name"]] = tensor
    return InferRequest(
        id=request_id,
        inputs=inputs,
        parameters=_object(doc.get("parameters"), "parameters"),
        outputs=_requested_outputs(doc.get("outputs")),
    )


def encode_response(
    header: dict[str, Any], outputs: list[OutputTensor], request: InferRequest
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when tensors go as binary."""
    wanted = {o.get("name"): o for o in request.outputs} if request.outputs else None
    default_binary = bool(request.parameters.get("binary_data_output", False))
    tensors, blobs = [], []
    for t in outputs:
        if wanted is not None and t.name not in wanted:
            continue
        params = (wanted[t.name].get("parameters") or {}) if wanted is not None else {}
        entry: dict[str, Any] = {
            "name": t.name,
            "datatype": t.datatype,
            "shape": list(t.data.shape),
        }
        if t.parameters:
            entry["parameters"] = dict(t.parameters)
        if params.get("binary_data", default_binary):
            blob = to_raw(t)
            entry.setdefault("parameters", {})["binary_data_size"] = len(blob)
            blobs.append(blob)
        else:
            entry["data"] = t.data.ravel().tolist()
        tensors.append(entry)
    head = json.dumps({**header, "outputs": tensors}).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
