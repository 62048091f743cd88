"""Open Inference Protocol (KServe V2) tensors: JSON and the binary tensor extension.

Standard clients (tritonclient among them) send and ask for tensors as raw
bytes after a JSON header whose length is in ``Inference-Header-Content-Length``;
both forms are read and written here, with no web framework involved.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from xserve.errors import InvalidInput
from xserve.serving.inputs import check_client_id, check_depth
from xserve.serving.v2_tensors import InferRequest as V2Request
from xserve.serving.v2_tensors import OutputTensor

__all__ = ["HEADER_LENGTH", "InferRequest", "OutputTensor", "decode_request", "encode_response"]

HEADER_LENGTH = "Inference-Header-Content-Length"
_NUMPY: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_INT_RANGE = {
    name: (int(np.iinfo(t).min), int(np.iinfo(t).max))
    for name, t in _NUMPY.items()
    if name.startswith(("INT", "UINT"))
}
_FLOAT_MAX = {"FP16": float(np.finfo(np.float16).max), "FP32": float(np.finfo(np.float32).max)}


@dataclass
class InferRequest(V2Request):
    listed: dict[str, list[Any]] = field(default_factory=dict)
    """Inputs already turned into Python lists (large bodies: off the event loop)."""


def _decode_bytes(raw: bytes, where: str) -> list[str]:
    """Length-prefixed elements, as text (features are numbers or category names)."""
    items, pos = [], 0
    try:
        while pos < len(raw):
            (n,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + n > len(raw):
                raise InvalidInput(f"{where}: BYTES element overruns its binary data")
            items.append(raw[pos + 4 : pos + 4 + n].decode())
            pos += 4 + n
    except (struct.error, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{where}: malformed BYTES binary data: {exc}") from None
    return items


def _fits(value: Any, dtype: str) -> bool:
    """Whether the JSON number ``value`` is a value of ``dtype`` (numbers only)."""
    if isinstance(value, bool):
        return True  # true and false are 1 and 0 in every type
    if dtype == "BOOL":
        return value in (0, 1)
    if dtype in _INT_RANGE:
        low, high = _INT_RANGE[dtype]
        if isinstance(value, float) and not value.is_integer():
            return False  # NaN, infinities and fractions alike
        return bool(low <= value <= high)
    if isinstance(value, float) and not math.isfinite(value):
        return True  # NaN (a missing value) and infinities are the rows' check
    return bool(abs(value) <= _FLOAT_MAX.get(dtype, math.inf))


def _check_values(values: list[Any], dtype: str, shape: list[int], name: str, where: str) -> None:
    """Every JSON number must be a value of its declared datatype: none is wrapped or
    rounded to infinity on the way to its numpy type."""
    for pos, value in enumerate(values):
        if isinstance(value, (int, float)):  # bool included
            if _fits(value, dtype):
                continue
            index = "".join(f"[{i}]" for i in np.unravel_index(pos, shape))
            shown = repr(value) if len(str(value)) <= 40 else "a number too large"
            raise InvalidInput(f"{name}{index}: {shown} does not fit {dtype}")
        raise InvalidInput(f"{where}.data: expected numbers for {dtype}")


def _tensor(spec: Any, binary: memoryview | None, where: str) -> npt.NDArray[Any]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidInput(f"{where}: expected an object with name, shape, datatype, data")
    shape, dtype = spec.get("shape"), spec.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput(f"{where}.shape: expected a list of non-negative integers")
    if dtype != "BYTES" and dtype not in _NUMPY:
        raise InvalidInput(f"{where}.datatype: {dtype!r} is not a V2 datatype")
    try:
        if binary is not None:
            if dtype == "BYTES":
                arr: npt.NDArray[Any] = np.array(_decode_bytes(bytes(binary), where), dtype=object)
            else:
                arr = np.frombuffer(binary, dtype=_NUMPY[dtype])
        else:
            data = spec.get("data")
            if data is None:
                raise InvalidInput(f"{where}.data: missing")
            arr = np.array(data, dtype=object).reshape(shape)
            if dtype != "BYTES":
                values = arr.ravel().tolist()
                _check_values(values, dtype, shape, f"inputs.{spec['name']}", where)
                arr = np.array(values, dtype=_NUMPY[dtype]).reshape(shape)
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


def _binary(t: OutputTensor) -> bytes:
    if t.datatype == "BYTES":
        parts = [str(v).encode() for v in t.data.ravel().tolist()]
        return b"".join(struct.pack("<I", len(p)) + p for p in parts)
    return np.ascontiguousarray(t.data, dtype=_NUMPY[t.datatype]).tobytes()


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
            blob = _binary(t)
            entry.setdefault("parameters", {})["binary_data_size"] = len(blob)
            blobs.append(blob)
        else:
            entry["data"] = t.data.ravel().tolist()
        tensors.append(entry)
    head = json.dumps({**header, "outputs": tensors}).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
