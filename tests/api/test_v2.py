"""The Open Inference Protocol (KServe V2) REST API, through the standard tritonclient.

Every answer is checked against what ``/v1/models/{m}/predict`` gives for the
same rows, on all four demo models, for JSON and binary tensors both ways.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
import tritonclient.http as triton
import xgboost as xgb
import yaml
from tritonclient.utils import InferenceServerException

from tests.server import DEMO_MODELS, Server, copy_demo_models, running_server

DEMOS = sorted(p.name for p in DEMO_MODELS.iterdir() if p.is_dir())
LABEL_DATATYPE = {
    "credit-risk": "INT64",
    "breast-cancer": "BYTES",
    "iris": "BYTES",
    "diabetes": "FP64",
}
CATEGORIES = ["car", "home", "education"]


def _frame(name: str, n: int = 12) -> pd.DataFrame:
    return pd.read_csv(DEMO_MODELS / name / "1" / "background.csv").head(n)


def _manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEMO_MODELS / name / "1" / "xserve.yaml").read_text())  # type: ignore[no-any-return]


def _add_categorical_model(root: Path) -> None:
    """A tiny xgboost model with a categorical feature, sent as BYTES by V2 clients."""
    rng = np.random.default_rng(7)
    amount = rng.uniform(0, 100, 300)
    purpose = rng.integers(0, len(CATEGORIES), 300)
    y = ((amount > 50) ^ (purpose == 2)).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3},
        xgb.DMatrix(np.column_stack([amount, purpose]), label=y),
        num_boost_round=10,
    )
    folder = root / "loan-purpose" / "1"
    folder.mkdir(parents=True)
    booster.save_model(folder / "model.json")
    manifest = {
        "flavor": "xgboost",
        "artifact": "model.json",
        "features": [
            {"name": "amount", "type": "numeric"},
            {"name": "purpose", "type": "categorical", "categories": CATEGORIES},
        ],
        "classes": [0, 1],
    }
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The demo models plus one with a categorical feature."""
    root = copy_demo_models(tmp_path_factory.mktemp("repo") / "models")
    _add_categorical_model(root)
    with running_server(root) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield c
    c.close()


def _v1(server: Server, name: str, rows: list[Any]) -> dict[str, Any]:
    with server.client() as c:
        r = c.post(f"/v1/models/{name}/predict", json={"instances": rows})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _matrix_input(
    x: npt.NDArray[Any], datatype: str = "FP64", binary: bool = True
) -> triton.InferInput:
    tensor = triton.InferInput("input-0", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def _labels(result: triton.InferResult) -> list[Any]:
    arr = result.as_numpy("predict")
    assert arr is not None
    return [v.decode() if isinstance(v, bytes) else v for v in arr.tolist()]


def _assert_same_as_v1(result: triton.InferResult, expected: dict[str, Any], name: str) -> None:
    predict = result.get_output("predict")
    assert predict is not None and predict["datatype"] == LABEL_DATATYPE[name]
    if name == "diabetes":
        np.testing.assert_allclose(result.as_numpy("predict"), expected["predictions"], rtol=1e-12)
        assert result.get_output("probabilities") is None
        return
    assert _labels(result) == expected["predictions"]
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), expected["probabilities"], rtol=1e-12, atol=1e-15
    )


def _error(r: Any, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "code"} and body["code"] == code
    return str(body["error"])


# -- health and metadata -----------------------------------------------------


def test_server_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "xserve"
    assert isinstance(meta["version"], str) and meta["version"]
    assert "binary_tensor_data" in meta["extensions"]


def test_model_ready_by_model_and_version(
    client: triton.InferenceServerClient, server: Server
) -> None:
    for name in DEMOS:
        assert client.is_model_ready(name)
        assert client.is_model_ready(name, "1")
    assert not client.is_model_ready("credit-risk", "9")
    assert not client.is_model_ready("no-such-model")
    with server.client() as c:
        _error(c.get("/v2/models/no-such-model/ready"), 404, "model_not_found")
        _error(c.get("/v2/models/credit-risk/versions/9/ready"), 404, "model_not_found")


@pytest.mark.parametrize("name", DEMOS)
def test_model_metadata(client: triton.InferenceServerClient, name: str) -> None:
    manifest = _manifest(name)
    features = [f["name"] for f in manifest["features"]]
    meta = client.get_model_metadata(name)
    assert client.get_model_metadata(name, "1") == meta
    assert meta["name"] == name and meta["versions"] == ["1"]
    assert meta["platform"] == manifest["flavor"]
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, len(features)]}]
    assert meta["parameters"]["features"] == features
    outputs = {o["name"]: o for o in meta["outputs"]}
    predict = {"name": "predict", "datatype": LABEL_DATATYPE[name], "shape": [-1]}
    assert outputs["predict"] == predict
    if manifest["task"] == "classification":
        assert outputs["probabilities"]["datatype"] == "FP64"
        assert outputs["probabilities"]["shape"] == [-1, len(manifest["classes"])]
    else:
        assert set(outputs) == {"predict"}


def test_metadata_of_unknown_model_is_an_error(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="not found"):
        client.get_model_metadata("no-such-model")


# -- infer -----------------------------------------------------------------


@pytest.mark.parametrize("name", DEMOS)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("ask_outputs", [False, True], ids=["all-outputs", "requested-outputs"])
def test_infer_equals_v1_predict(
    client: triton.InferenceServerClient, server: Server, name: str, binary: bool, ask_outputs: bool
) -> None:
    x = _frame(name).to_numpy(dtype=np.float64)
    wanted = ["predict"] if name == "diabetes" else ["predict", "probabilities"]
    outputs = None
    if ask_outputs:
        outputs = [triton.InferRequestedOutput(o, binary_data=binary) for o in wanted]
    inputs = [_matrix_input(x, binary=binary)]
    result = client.infer(name, inputs, outputs=outputs, request_id="r-1")
    response = result.get_response()
    assert response["model_name"] == name and response["model_version"] == "1"
    assert response["id"] == "r-1"
    assert result.as_numpy("predict").shape == (len(x),)
    if ask_outputs:  # JSON data only when every output was asked for without binary
        carried_as_json = all("data" in o for o in response["outputs"])
        assert carried_as_json == (not binary)
    _assert_same_as_v1(result, _v1(server, name, x.tolist()), name)


@pytest.mark.parametrize("name", DEMOS)
def test_infer_by_version(client: triton.InferenceServerClient, server: Server, name: str) -> None:
    x = _frame(name, 5).to_numpy(dtype=np.float64)
    result = client.infer(name, [_matrix_input(x)], model_version="1")
    assert result.get_response()["model_version"] == "1"
    _assert_same_as_v1(result, _v1(server, name, x.tolist()), name)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_only_the_requested_output_is_returned(
    client: triton.InferenceServerClient, server: Server, binary: bool
) -> None:
    x = _frame("breast-cancer").to_numpy(dtype=np.float64)
    asked = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer("breast-cancer", [_matrix_input(x, binary=binary)], outputs=asked)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities"]
    assert result.as_numpy("predict") is None
    expected = _v1(server, "breast-cancer", x.tolist())["probabilities"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-12)


@pytest.mark.parametrize("name", ["credit-risk", "iris", "diabetes"])
@pytest.mark.parametrize("shape", ["[n]", "[n,1]"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_one_tensor_per_feature(
    client: triton.InferenceServerClient, server: Server, name: str, shape: str, binary: bool
) -> None:
    frame = _frame(name)
    inputs = []
    for column in reversed(frame.columns):  # order does not matter: tensors are matched by name
        values = frame[column].to_numpy(dtype=np.float64)
        if shape == "[n,1]":
            values = values.reshape(-1, 1)
        tensor = triton.InferInput(column, list(values.shape), "FP64")
        tensor.set_data_from_numpy(values, binary_data=binary)
        inputs.append(tensor)
    result = client.infer(name, inputs)
    _assert_same_as_v1(result, _v1(server, name, frame.to_dict(orient="records")), name)


@pytest.mark.parametrize("name", ["iris", "credit-risk", "diabetes"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_fp32_inputs(
    client: triton.InferenceServerClient, server: Server, name: str, binary: bool
) -> None:
    x32 = _frame(name).to_numpy(dtype=np.float32)
    result = client.infer(name, [_matrix_input(x32, "FP32", binary)])
    # The server sees exactly the float32 values, widened.
    _assert_same_as_v1(result, _v1(server, name, x32.astype(np.float64).tolist()), name)


def test_fp32_tensor_per_feature(client: triton.InferenceServerClient, server: Server) -> None:
    frame = _frame("iris")
    inputs = []
    for column in frame.columns:
        values = frame[column].to_numpy(dtype=np.float32)
        tensor = triton.InferInput(column, [len(values)], "FP32")
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    result = client.infer("iris", inputs)
    widened = frame.to_numpy(dtype=np.float32).astype(np.float64).tolist()
    _assert_same_as_v1(result, _v1(server, "iris", widened), "iris")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_categorical_feature_as_bytes(
    client: triton.InferenceServerClient, server: Server, binary: bool
) -> None:
    amount = np.array([10.0, 70.0, 20.0, 90.0, 55.0])
    purpose = np.array(["car", "home", "education", "education", "car"], dtype=object)
    amount_in = triton.InferInput("amount", [5], "FP64")
    amount_in.set_data_from_numpy(amount, binary_data=binary)
    purpose_in = triton.InferInput("purpose", [5], "BYTES")
    purpose_in.set_data_from_numpy(purpose, binary_data=binary)
    result = client.infer("loan-purpose", [amount_in, purpose_in])
    rows = [{"amount": a, "purpose": p} for a, p in zip(amount, purpose, strict=True)]
    expected = _v1(server, "loan-purpose", rows)
    assert _labels(result) == expected["predictions"]
    probabilities = result.as_numpy("probabilities")
    np.testing.assert_allclose(probabilities, expected["probabilities"], rtol=1e-12)
    # The categories really matter to this model: the answer differs from all-"car".
    all_car = _v1(server, "loan-purpose", [{**r, "purpose": "car"} for r in rows])
    assert all_car["probabilities"] != expected["probabilities"]


def test_unknown_category_is_an_error(client: triton.InferenceServerClient) -> None:
    amount_in = triton.InferInput("amount", [1], "FP64")
    amount_in.set_data_from_numpy(np.array([10.0]))
    purpose_in = triton.InferInput("purpose", [1], "BYTES")
    purpose_in.set_data_from_numpy(np.array(["boat"], dtype=object))
    with pytest.raises(InferenceServerException, match="'boat' is not one of"):
        client.infer("loan-purpose", [amount_in, purpose_in])


def test_explain_parameter_adds_attributions(
    client: triton.InferenceServerClient, server: Server
) -> None:
    frame = _frame("credit-risk", 6)
    x = frame.to_numpy(dtype=np.float64)
    result = client.infer("credit-risk", [_matrix_input(x)], parameters={"explain": True})
    attributions, base = result.as_numpy("attributions"), result.as_numpy("base_values")
    assert attributions is not None and attributions.shape == x.shape
    assert base is not None and base.shape == (len(x),)
    with server.client() as c:
        r = c.post(
            "/v1/models/credit-risk/predict",
            params={"explain": "true"},
            json={"instances": x.tolist()},
        )
    assert r.status_code == 200, r.text
    for i, explanation in enumerate(r.json()["explanations"]):
        assert base[i] == pytest.approx(explanation["base_value"], rel=1e-9)
        values = [explanation["values"][f] for f in frame.columns]
        np.testing.assert_allclose(attributions[i], values, rtol=1e-9, atol=1e-12)
    plain = client.infer("credit-risk", [_matrix_input(x)])
    assert plain.as_numpy("attributions") is None


# -- MLServer content types and the explained class ---------------------------------------

CONTENT_TYPE = {"INT64": "np", "FP64": "np", "BYTES": "str"}
"""MLServer's NumpyCodec ("np") for numbers, StringCodec ("str") for text."""


@pytest.mark.parametrize("name", DEMOS)
def test_outputs_name_their_mlserver_content_type(
    client: triton.InferenceServerClient, server: Server, name: str
) -> None:
    x = _frame(name, 5).to_numpy(dtype=np.float64)
    binary = client.infer(name, [_matrix_input(x)], parameters={"explain": True})
    with server.client() as c:
        r = c.post(
            f"/v2/models/{name}/infer",
            json={
                "inputs": [_tensor("input-0", list(x.shape), x.ravel().tolist())],
                "parameters": {"explain": True},
            },
        )
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    names = ["predict", "probabilities", "attributions", "base_values", "explained_class"]
    if name == "diabetes":  # a regressor: no probabilities, no class to name
        names = ["predict", "attributions", "base_values"]
    assert [o["name"] for o in outputs] == names
    for o in outputs:
        assert o["parameters"]["content_type"] == CONTENT_TYPE[o["datatype"]], o
        got = binary.get_output(o["name"])
        assert got is not None and got["parameters"]["content_type"] == CONTENT_TYPE[o["datatype"]]
    assert {o["name"]: o["datatype"] for o in outputs}["predict"] == LABEL_DATATYPE[name]


@pytest.mark.parametrize("name", ["iris", "credit-risk", "breast-cancer"])
def test_explained_class_names_each_rows_class(
    client: triton.InferenceServerClient, server: Server, name: str
) -> None:
    """V2 explains each row's predicted class: explained_class says which, row by row, as
    the v1 explanations' "class" does."""
    x = _frame(name, 150).to_numpy(dtype=np.float64)[::13]  # rows across the classes
    result = client.infer(name, [_matrix_input(x)], parameters={"explain": True})
    explained = result.as_numpy("explained_class")
    assert explained is not None and explained.shape == (len(x),)
    labels = [v.decode() if isinstance(v, bytes) else v for v in explained.tolist()]
    assert labels == _labels(result)
    assert result.get_output("explained_class")["datatype"] == LABEL_DATATYPE[name]
    with server.client() as c:
        r = c.post(
            f"/v1/models/{name}/predict", params={"explain": "true"}, json={"instances": x.tolist()}
        )
    assert labels == [e["class"] for e in r.json()["explanations"]]
    if name == "iris":
        assert len(set(labels)) > 1  # rows of one answer explain different classes
    only = client.infer(
        name,
        [_matrix_input(x)],
        parameters={"explain": True},
        outputs=[triton.InferRequestedOutput("explained_class")],
    )
    assert [o["name"] for o in only.get_response()["outputs"]] == ["explained_class"]
    with pytest.raises(InferenceServerException, match=r"outputs\.explained_class: unknown output"):
        client.infer(
            name, [_matrix_input(x)], outputs=[triton.InferRequestedOutput("explained_class")]
        )


def test_client_sees_the_servers_error_message(client: triton.InferenceServerClient) -> None:
    x = _frame("iris").to_numpy(dtype=np.float64)[:, :3]
    with pytest.raises(InferenceServerException, match=r"expected shape \[n, 4\]"):
        client.infer("iris", [_matrix_input(x)])


# -- errors over raw HTTP ------------------------------------------------------


def _tensor(name: str, shape: list[int], data: list[Any], datatype: str = "FP64") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
MATRIX = _tensor("input-0", [1, 4], IRIS_ROW)
PER_FEATURE = [_tensor(n, [1], [v]) for n, v in zip(IRIS_FEATURES, IRIS_ROW, strict=True)]


def test_unknown_model_or_version_is_404(server: Server) -> None:
    body = {"inputs": [MATRIX]}
    with server.client() as c:
        assert "no-such-model" in _error(
            c.post("/v2/models/no-such-model/infer", json=body), 404, "model_not_found"
        )
        _error(c.post("/v2/models/iris/versions/9/infer", json=body), 404, "model_not_found")
        # Unknown model wins over a bad body.
        _error(c.post("/v2/models/no-such-model/infer", content=b"{"), 404, "model_not_found")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [_tensor("input-0", [1, 3], IRIS_ROW[:3])]}, r"expected shape \[n, 4\]"),
        ({"inputs": [_tensor("input-0", [1, 4], IRIS_ROW, "FLOAT")]}, "not a V2 datatype"),
        ({"inputs": [_tensor("input-0", [2, 4], IRIS_ROW)]}, "does not fit shape"),
        ({"inputs": [_tensor("input-0", [1, 4], ["a", "b", "c", "d"])]}, "expected numbers"),
        ({"inputs": PER_FEATURE[:3]}, "petal_width: missing feature"),
        (
            {"inputs": [{**t, "shape": [1, 2], "data": t["data"] * 2} for t in PER_FEATURE]},
            r"expected shape \[n\] or \[n, 1\]",
        ),
        ({"inputs": [*PER_FEATURE, _tensor("colour", [1], [1.0])]}, "colour: unknown feature"),
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [MATRIX], "outputs": [{"name": "nope"}]}, "outputs.nope: unknown output"),
        ({"inputs": [MATRIX], "outputs": ["predict"]}, r"outputs\[0\]"),
        ({"inputs": [MATRIX], "parameters": [1]}, "parameters"),
        ({"inputs": [MATRIX], "parameters": {"explain": "yes"}}, "parameters.explain"),
        ({"inputs": [{**MATRIX, "parameters": {"binary_data_size": "x"}}]}, "binary_data_size"),
    ],
    ids=[
        "wrong-width",
        "bad-datatype",
        "data-vs-shape",
        "strings-as-fp64",
        "missing-feature",
        "feature-not-a-column",
        "unknown-feature",
        "no-inputs",
        "unknown-output",
        "output-not-object",
        "parameters-not-object",
        "explain-not-bool",
        "bad-binary-size",
    ],
)
def test_bad_requests_are_422(server: Server, body: dict[str, Any], message: str) -> None:
    with server.client() as c:
        r = c.post("/v2/models/iris/infer", json=body)
    error = _error(r, 422, "invalid_input")
    assert re.search(message, error), error


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b"\xff\xfe"])
def test_malformed_body_is_a_4xx(server: Server, content: bytes) -> None:
    with server.client() as c:
        r = c.post(
            "/v2/models/iris/infer", content=content, headers={"Content-Type": "application/json"}
        )
    assert 400 <= r.status_code < 500, r.text
    assert set(r.json()) == {"error", "code"}


def test_binary_size_beyond_the_body_is_422(server: Server) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, 4],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": 64},
                }
            ]
        }
    ).encode()
    payload = header + np.array(IRIS_ROW, dtype=np.float64).tobytes()  # 32 bytes, not 64
    with server.client() as c:
        r = c.post(
            "/v2/models/iris/infer",
            content=payload,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
    assert "exceeds the body" in _error(r, 422, "invalid_input")
