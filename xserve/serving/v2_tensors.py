"""Open Inference Protocol (KServe V2) tensors, whatever carries them (REST JSON, the binary
tensor extension, gRPC): datatypes, value checks and the BYTES element layout.

A tensor's raw form is the same on every transport: its elements flattened in row-major
order, little-endian; a BYTES element is its length (4 bytes, little-endian) then its bytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from xserve.errors import InvalidInput

__all__ = [
    "DATATYPES",
    "InferRequest",
    "OutputTensor",
    "check_values",
    "decode_bytes",
    "element_count",
    "from_raw",
    "to_raw",
]

DATATYPES: dict[str, Any] = {
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
"""The numpy type of every V2 datatype but BYTES (kept as text: numbers or category names)."""

_INT_RANGE = {
    name: (int(np.iinfo(t).min), int(np.iinfo(t).max))
    for name, t in DATATYPES.items()
    if name.startswith(("INT", "UINT"))
}
_FLOAT_MAX = {"FP16": float(np.finfo(np.float16).max), "FP32": float(np.finfo(np.float32).max)}


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, npt.NDArray[Any]]
    parameters: dict[str, Any]
    outputs: list[dict[str, Any]] | None
    """The outputs asked for, with their parameters; None means all."""


@dataclass
class OutputTensor:
    name: str
    data: npt.NDArray[Any]
    datatype: str
    parameters: dict[str, Any] = field(default_factory=dict)


def element_count(shape: list[int], where: str) -> int:
    """The number of elements of ``shape``, which must be non-negative integers."""
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"{where}.shape: expected a list of non-negative integers")
    return math.prod(shape)


def decode_bytes(raw: bytes, where: str) -> list[str]:
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


def from_raw(raw: bytes | memoryview, datatype: str, shape: list[int], where: str) -> Any:
    """A tensor from its raw bytes, which must hold exactly ``shape``'s elements."""
    count = element_count(shape, where)
    if datatype == "BYTES":
        items = decode_bytes(bytes(raw), where)
        if len(items) != count:
            raise InvalidInput(
                f"{where}: shape {shape} has {count} elements, the raw data {len(items)}"
            )
        return np.array(items, dtype=object).reshape(shape)
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"{where}: shape {shape} of {datatype} takes {count * dtype.itemsize} bytes, "
            f"the raw data has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def to_raw(t: OutputTensor) -> bytes:
    """``t``'s elements in the raw layout."""
    if t.datatype == "BYTES":
        parts = [str(v).encode() for v in t.data.ravel().tolist()]
        return b"".join(struct.pack("<I", len(p)) + p for p in parts)
    dtype = np.dtype(DATATYPES[t.datatype]).newbyteorder("<")
    return np.ascontiguousarray(t.data, dtype=dtype).tobytes()


def _fits(value: Any, dtype: str) -> bool:
    """Whether the number ``value`` is a value of ``dtype`` (numbers only)."""
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


def check_values(values: list[Any], dtype: str, shape: list[int], name: str, where: str) -> None:
    """Every number must be a value of its declared datatype: none is wrapped or rounded
    to infinity on the way to its numpy type."""
    for pos, value in enumerate(values):
        if isinstance(value, (int, float)):  # bool included
            if _fits(value, dtype):
                continue
            index = "".join(f"[{i}]" for i in np.unravel_index(pos, shape))
            shown = repr(value) if len(str(value)) <= 40 else "a number too large"
            raise InvalidInput(f"{name}{index}: {shown} does not fit {dtype}")
        raise InvalidInput(f"{where}.data: expected numbers for {dtype}")
