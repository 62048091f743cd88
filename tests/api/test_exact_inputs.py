"""Values are taken exactly or refused: V2 numbers that do not fit their datatype, inputs
too large for float32 arithmetic, outputs that are not finite, JSON nested too deeply,
client ids and audit query values out of range: 4xx naming the cause, never a wrapped
value, a null, an Infinity or a 500."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.api.test_http_errors import error_body
from tests.server import Server, copy_demo_models, running_server
from xserve.errors import InvalidInput, InvalidJson
from xserve.repository.manifest import Feature
from xserve.serving.inputs import FLOAT32_MAX, MAX_DEPTH, check_depth, to_matrix

IRIS = [5.1, 3.5, 1.4, 0.2]
ROWS = {  # one row per demo model, in feature order
    "iris": IRIS,
    "credit-risk": [61, 60500, 0.2419, 0.6015, 6, 0, 134, 4600],
    "diabetes": [59, 2, 32.1, 101.0, 157, 93.2, 38.0, 4.0, 4.8598, 87],
    "breast-cancer": None,  # filled from the server's metadata
}
INFER = "/v2/models/iris/infer"
JSON = {"content-type": "application/json"}


def _infer(datatype: str, data: Any, shape: list[int] | None = None) -> dict[str, Any]:
    tensor = {"name": "input-0", "shape": shape or [1, 4], "datatype": datatype, "data": data}
    return {"inputs": [tensor]}


def _row(c: httpx.Client, model: str) -> list[float]:
    row = ROWS[model]
    if row is None:
        meta = c.get(f"/v1/models/{model}").json()
        row = [(f.get("min", 0) + f.get("max", 0)) / 2 for f in meta["features"]]
    return list(row)


# -- 1. V2 JSON numbers must fit their declared datatype ---------------------------------

OUT_OF_TYPE = {
    "INT8 above": ("INT8", [5, 52000, 1, 0], "inputs.input-0[0][1]: 52000 does not fit INT8"),
    "INT8 below": ("INT8", [5, 3, -129, 0], "inputs.input-0[0][2]: -129 does not fit INT8"),
    "UINT64 negative": ("UINT64", [5, 3, 1, -1], "inputs.input-0[0][3]: -1 does not fit UINT64"),
    "INT64 above": ("INT64", [2**63, 3, 1, 0], "inputs.input-0[0][0]:"),
    "INT32 fraction": ("INT32", [5, 3.5, 1, 0], "3.5 does not fit INT32"),
    "UINT8 nested": ("UINT8", [[5, 3, 256, 0]], "inputs.input-0[0][2]: 256 does not fit UINT8"),
    "FP32 huge": ("FP32", [1e300, 3, 1, 0], "inputs.input-0[0][0]: 1e+300 does not fit FP32"),
    "FP16 huge": ("FP16", [5, 70000, 1, 0], "70000 does not fit FP16"),
    "BOOL two": ("BOOL", [1, 0, 2, 0], "inputs.input-0[0][2]: 2 does not fit BOOL"),
}


@pytest.mark.parametrize("case", sorted(OUT_OF_TYPE))
def test_v2_json_numbers_outside_their_datatype_are_422(server: Server, case: str) -> None:
    datatype, data, fragment = OUT_OF_TYPE[case]
    with server.client() as c:
        r = c.post(INFER, json=_infer(datatype, data))
    error_body(r, 422, "invalid_input", fragment)


def test_v2_json_numbers_within_their_datatype_are_decided_as_sent(server: Server) -> None:
    with server.client() as c:
        want = c.post(INFER, json=_infer("FP64", [5, 3, 1, 0])).json()["outputs"]
        for datatype in ("INT8", "UINT8", "INT64", "UINT64", "FP16", "FP32"):
            r = c.post(INFER, json=_infer(datatype, [5, 3, 1, 0]))
            assert r.status_code == 200, (datatype, r.text)
            assert r.json()["outputs"] == want, datatype
        for datatype, extreme in (("UINT64", 2**64 - 1), ("INT64", -(2**63)), ("INT8", -128)):
            r = c.post(INFER, json=_infer(datatype, [5, 3, 1, extreme]))
            assert r.status_code == 200, (datatype, r.text)


def test_v2_binary_integers_still_decoded(server: Server) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, 4],
                    "datatype": "INT8",
                    "parameters": {"binary_data_size": 4},
                }
            ]
        }
    ).encode()
    with server.client() as c:
        r = c.post(
            INFER,
            content=header + struct.pack("<4b", 5, 3, 1, 0),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        want = c.post(INFER, json=_infer("FP64", [5, 3, 1, 0]))
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == want.json()["outputs"]


# -- 2. inputs float32 cannot hold, outputs that are not finite ---------------------------


@pytest.mark.parametrize("model", sorted(ROWS))
@pytest.mark.parametrize("value", [1e300, 1.79e308, -3.5e38])
@pytest.mark.parametrize("route", ["predict", "predict?explain=true", "explain"])
def test_inputs_beyond_float32_are_422(
    server: Server, model: str, value: float, route: str
) -> None:
    with server.client() as c:
        row = _row(c, model)
        row[0] = value
        r = c.post(f"/v1/models/{model}/{route}", json={"instances": [row]})
    error_body(r, 422, "invalid_input", "instances[0].", "out of range", "float32")


@given(st.floats(min_value=FLOAT32_MAX, exclude_min=True, allow_infinity=False), st.booleans())
def test_every_value_beyond_float32_is_refused(value: float, negative: bool) -> None:
    with pytest.raises(InvalidInput, match=r"instances\[0\]\.a: .* out of range.*float32"):
        to_matrix([[-value if negative else value]], [Feature(name="a")], 10)


def test_v2_inputs_beyond_float32_are_422(server: Server) -> None:
    with server.client() as c:
        r = c.post(INFER, json=_infer("FP64", [1.79e308, 3, 1, 0]))
    error_body(r, 422, "invalid_input", "out of range", "float32")


@pytest.mark.parametrize("model", ["iris", "diabetes"])
def test_largest_float32_is_still_accepted(server: Server, model: str) -> None:
    with server.client() as c:
        row = _row(c, model)
        row[2] = 3.4e38
        r = c.post(f"/v1/models/{model}/predict", json={"instances": [row]})
    assert r.status_code == 200, r.text
    assert None not in r.json()["predictions"]


def _add_overflowing_model(models: Path) -> None:
    """A linear regression whose output overflows float64 for inputs float32 can hold."""
    import skops.io as sio
    from sklearn.linear_model import LinearRegression

    x = np.arange(20, dtype=float).reshape(-1, 1)
    model = LinearRegression().fit(x, 2 * x[:, 0])
    model.coef_ = np.array([1e300])
    folder = models / "overflow" / "1"
    folder.mkdir(parents=True)
    sio.dump(model, folder / "model.skops")
    manifest = {
        "flavor": "sklearn",
        "artifact": "model.skops",
        "task": "regression",
        "features": [{"name": "x", "type": "numeric"}],
    }
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest))


@pytest.fixture(scope="module")
def overflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = copy_demo_models(tmp_path_factory.mktemp("overflow") / "models", ["iris"])
    _add_overflowing_model(models)
    with running_server(models) as srv:
        yield srv


def test_non_finite_outputs_are_422_not_null_or_infinity(overflow_server: Server) -> None:
    path = "/v1/models/overflow/predict"
    with overflow_server.client() as c:
        assert c.post(path, json={"instances": [[1.0]]}).json()["predictions"] == [1e300]
        r = c.post(path, json={"instances": [[1e10]]})
        error_body(r, 422, "invalid_input", "non-finite output")
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1e10]}]}
        r = c.post("/v2/models/overflow/infer", json=body)
        error_body(r, 422, "invalid_input", "non-finite output")


# -- 3. nesting depth and client ids ------------------------------------------------------


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 970, 10_000])
@pytest.mark.parametrize("where", ["body", "id", "instances"])
def test_deep_json_is_400_invalid_json(server: Server, depth: int, where: str) -> None:
    deep = _nested(depth)
    v1 = {
        "body": deep,
        "id": f'{{"instances": [{IRIS}], "id": {deep}}}',
        "instances": f'{{"instances": {deep}}}',
    }[where]
    v2 = {
        "body": deep,
        "id": json.dumps(_infer("FP64", IRIS))[:-1] + f', "id": {deep}}}',
        "instances": json.dumps(_infer("FP64", [1]))[:-1] + f', "parameters": {{"a": {deep}}}}}',
    }[where]
    with server.client() as c:
        for path, body in (("/v1/models/iris/predict", v1), (INFER, v2)):
            r = c.post(path, content=body, headers=JSON)
            error_body(r, 400, "invalid_json", "nested")


def test_deep_json_to_explain_is_not_500(server: Server) -> None:
    with server.client() as c:
        r = c.post("/v1/models/iris/explain", content=_nested(10_000), headers=JSON)
    error_body(r, 400, "invalid_json", "nested")


def test_json_at_the_depth_limit_is_read(server: Server) -> None:
    inner = "[" * (MAX_DEPTH - 2) + "1" + "]" * (MAX_DEPTH - 2)
    body = f'{{"instances": [{inner}]}}'  # depth MAX_DEPTH: read, then refused as a value
    with server.client() as c:
        r = c.post("/v1/models/iris/predict", content=body, headers=JSON)
    error_body(r, 422, "invalid_input", "instances[0]")


def test_depth_ignores_brackets_in_strings() -> None:
    check_depth(json.dumps({"id": "[" * 500, "b": '\\"' + "{" * 500}).encode())
    check_depth(b'["\\\\"' + b"]" * 100)  # an escaped backslash ends the string
    with pytest.raises(InvalidJson, match="65 levels"):
        check_depth(b'["\\\\", ' + b"[" * 64 + b"]" * 65)


BAD_IDS = {
    "list": [1],
    "object": {"a": 1},
    "bool": True,
    "int above 2^63": 2**63,
    "int below -2^63": -(2**63) - 1,
    "long string": "x" * 257,
}


@pytest.mark.parametrize("case", sorted(BAD_IDS))
def test_bad_client_ids_are_422(server: Server, case: str) -> None:
    with server.client() as c:
        r = c.post("/v1/models/iris/predict", json={"instances": [IRIS], "id": BAD_IDS[case]})
        error_body(r, 422, "invalid_input", "id:")
        r = c.post("/v1/models/iris/explain", json={"instances": [IRIS], "id": BAD_IDS[case]})
        error_body(r, 422, "invalid_input", "id:")
    if isinstance(BAD_IDS[case], str):
        with server.client() as c:
            r = c.post(INFER, json={**_infer("FP64", IRIS), "id": BAD_IDS[case]})
        error_body(r, 422, "invalid_input", "id:")


@pytest.mark.parametrize("client_id", ["x" * 256, "[[[[", 42, -(2**63), 2**63 - 1, 1.5])
def test_good_client_ids_are_echoed_and_audited(server: Server, client_id: Any) -> None:
    with server.client() as c:
        r = c.post("/v1/models/iris/predict", json={"instances": [IRIS], "id": client_id})
        assert r.status_code == 200, r.text
        assert r.json()["id"] == client_id
        records = c.get("/v1/audit/records", params={"request_id": r.json()["request_id"]})
    assert records.status_code == 200, records.text


# -- 4. audit query values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [("after", "9" * 26), ("after", str(2**63)), ("limit", "9" * 26), ("after", "-1")],
)
def test_audit_query_values_out_of_range_are_422(server: Server, name: str, value: str) -> None:
    with server.client() as c:
        r = c.get("/v1/audit/records", params={name: value})
    error_body(r, 422, "invalid_input", name)


def test_audit_after_at_the_largest_sequence_number(server: Server) -> None:
    with server.client() as c:
        r = c.get("/v1/audit/records", params={"after": str(2**63 - 1)})
    assert r.status_code == 200, r.text
    assert r.json() == {"records": [], "next_after": None}
