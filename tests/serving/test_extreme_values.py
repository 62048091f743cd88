"""A bounded fuzz of extreme values (huge, tiny, non-finite, out-of-range integers) on v1,
V2 JSON and V2 binary against a real server: every answer is a 2xx or a 4xx, and always
strict JSON (no ``NaN``/``Infinity`` a JSON parser would refuse)."""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server import Server, copy_demo_models, running_server

FEATURES = {"iris": 4, "credit-risk": 8}
EXTREMES = [
    0.0, -0.0, 5e-324, -5e-324, 1.1754943508222875e-38, 1.401298464324817e-45,
    3.4028234663852886e38, 3.4028235677973366e38, -3.4028235677973366e38,
    1e300, -1e300, 1.7976931348623157e308, -1.7976931348623157e308,
    2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**25, -(10**25),
]  # fmt: skip
NUMBERS = st.one_of(
    st.sampled_from(EXTREMES),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**70), max_value=2**70),
)
# Tokens some JSON parsers accept: ours must refuse them with a 4xx, never fail on them.
NON_FINITE = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
V2_TYPES = {
    "BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q", "INT8": "b",
    "INT16": "h", "INT32": "i", "INT64": "q", "FP16": "e", "FP32": "f", "FP64": "d",
}  # fmt: skip
STATUSES: Counter[tuple[str, int]] = Counter()
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = copy_demo_models(tmp_path_factory.mktemp("fuzz") / "models", sorted(FEATURES))
    with running_server(root) as s:
        yield s
    print("\nextreme-value fuzz, answers by route and status:", dict(sorted(STATUSES.items())))


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def _refuse_constant(token: str) -> Any:
    raise AssertionError(f"answer holds {token}, which is not JSON")


def check(route: str, r: httpx.Response) -> None:
    STATUSES[(route, r.status_code)] += 1
    assert r.status_code < 500, (route, r.status_code, r.text[:500])
    json.loads(r.text, parse_constant=_refuse_constant)


def _numbers_text(values: list[Any]) -> str:
    return "[" + ",".join(v if isinstance(v, str) else json.dumps(v) for v in values) + "]"


def _row(model: str, draw: st.DrawFn) -> list[Any]:
    token = st.one_of(NUMBERS, NON_FINITE) if draw(st.booleans()) else NUMBERS
    return draw(st.lists(token, min_size=FEATURES[model], max_size=FEATURES[model]))


@st.composite
def v1_cases(draw: st.DrawFn) -> tuple[str, str]:
    model = draw(st.sampled_from(sorted(FEATURES)))
    rows = draw(st.lists(st.builds(lambda: None), min_size=1, max_size=3))
    text = ",".join(_numbers_text(_row(model, draw)) for _ in rows)
    route = draw(st.sampled_from(["predict", "predict?explain=true"]))
    return f"/v1/models/{model}/{route}", '{"instances":[' + text + "]}"


@given(case=v1_cases())
@FUZZ
def test_v1_answers_extreme_values_with_2xx_or_4xx(client: httpx.Client, case: Any) -> None:
    path, body = case
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    check("v1", r)


@st.composite
def v2_json_cases(draw: st.DrawFn) -> tuple[str, str]:
    model = draw(st.sampled_from(sorted(FEATURES)))
    datatype = draw(st.sampled_from(sorted(V2_TYPES)))
    row = _numbers_text(_row(model, draw))
    explain = draw(st.booleans())
    tensor = (
        f'{{"name":"input-0","shape":[1,{FEATURES[model]}],"datatype":"{datatype}","data":{row}}}'
    )
    params = ',"parameters":{"explain":true}' if explain else ""
    return f"/v2/models/{model}/infer", f'{{"inputs":[{tensor}]{params}}}'


@given(case=v2_json_cases())
@FUZZ
def test_v2_json_answers_extreme_values_with_2xx_or_4xx(client: httpx.Client, case: Any) -> None:
    path, body = case
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    check("v2-json", r)


def _pack(code: str, values: list[Any]) -> bytes:
    """Little-endian bytes of ``values`` as ``code``, each clamped into the type (binary
    tensors cannot hold an out-of-range value: the extremes are the type's own)."""
    out = b""
    for v in values:
        x = 0.0 if isinstance(v, str) else v
        if code in "efd":
            x = float(x) if abs(float(x)) < 1e308 or code == "d" else math.copysign(1e308, x)
            if code == "e":
                x = float(np.float16(x)) if abs(x) < 65504 else math.copysign(math.inf, x)
            elif code == "f":
                x = float(np.float32(x)) if abs(x) < 3.4e38 else math.copysign(math.inf, x)
            out += struct.pack("<" + code, x)
        elif code == "?":
            out += struct.pack("<?", bool(x))
        else:
            bits = struct.calcsize(code) * 8
            signed = code.islower()
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            n = int(x) if abs(float(x)) < 1e30 else (hi if x > 0 else lo)
            out += struct.pack("<" + code, min(max(n, lo), hi))
    return out


@st.composite
def v2_binary_cases(draw: st.DrawFn) -> tuple[str, bytes, int]:
    model = draw(st.sampled_from(sorted(FEATURES)))
    datatype = draw(st.sampled_from(sorted(V2_TYPES)))
    payload = _pack(V2_TYPES[datatype], _row(model, draw))
    if draw(st.booleans()):  # raw NaN and infinities, as a binary client can send them
        code = draw(st.sampled_from(["e", "f", "d"]))
        datatype = {"e": "FP16", "f": "FP32", "d": "FP64"}[code]
        special = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0])
        payload = _pack(code, draw(st.lists(special, min_size=FEATURES[model])))
        payload = payload[: struct.calcsize(code) * FEATURES[model]]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, FEATURES[model]],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(payload)},
                }
            ],
            "parameters": {"explain": draw(st.booleans())},
        }
    ).encode()
    return f"/v2/models/{model}/infer", header + payload, len(header)


@given(case=v2_binary_cases())
@FUZZ
def test_v2_binary_answers_extreme_values_with_2xx_or_4xx(client: httpx.Client, case: Any) -> None:
    path, body, header_length = case
    r = client.post(
        path, content=body, headers={"Inference-Header-Content-Length": str(header_length)}
    )
    check("v2-binary", r)


def test_the_fuzz_reached_both_answers(server: Server) -> None:
    """The cases above are not all refused (nor all accepted): they probe the boundary."""
    for route in ("v1", "v2-json", "v2-binary"):
        codes = {status for (r, status), n in STATUSES.items() if r == route and n}
        assert any(c < 300 for c in codes) and any(400 <= c < 500 for c in codes), (route, codes)
