"""The Open Inference Protocol over gRPC, through tritonclient.grpc, kserve's
InferenceGRPCClient (in its own process) and plain gRPC stubs, against one real
``xserve serve`` with API keys; every answer and error is checked against what HTTP
answers for the same request."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
import tritonclient.grpc as triton
import xgboost as xgb
import yaml
from tritonclient.utils import InferenceServerException

from tests.server import DEMO_MODELS, Server, copy_demo_models, free_port, running_server
from xserve.api.auth import NO_KEY
from xserve.grpc.proto import grpc_predict_v2_pb2 as pb
from xserve.grpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from xserve.security.keys import add_key

DEMOS = ["breast-cancer", "credit-risk", "diabetes"]
"""Integer, regression and text labels (fewer models: a quicker start)."""
MAX_BODY = 1_000_000
CATEGORIES = ["car", "home", "education"]
HERE = Path(__file__).parent


class Grpc:
    def __init__(self, server: Server, port: int, keys: dict[str, str]) -> None:
        self.server, self.port, self.keys = server, port, keys
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = GRPCInferenceServiceStub(self.channel)  # type: ignore[no-untyped-call]

    def auth(self, role: str = "predict") -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.keys[role]}")]

    def http(self, role: str = "predict") -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url,
            timeout=30,
            headers={"Authorization": f"Bearer {self.keys[role]}"},
        )


def _add_categorical_model(root: Path) -> None:
    """A tiny xgboost model with a categorical feature, sent as a BYTES tensor."""
    rng = np.random.default_rng(7)
    amount, purpose = rng.uniform(0, 100, 300), rng.integers(0, len(CATEGORIES), 300)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3},
        xgb.DMatrix(np.column_stack([amount, purpose]), label=(amount > 50) ^ (purpose == 2)),
        num_boost_round=5,
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
def g(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grpc]:
    root = copy_demo_models(tmp_path_factory.mktemp("repo") / "models", DEMOS)
    _add_categorical_model(root)
    keys_file = root.parent / "keys.txt"
    keys = {role: add_key(keys_file, f"{role}-user", role) for role in ("predict", "audit")}
    port = free_port()
    env = {
        "XSERVE_API_KEYS": str(keys_file),
        "XSERVE_GRPC_PORT": str(port),
        "XSERVE_MAX_BODY_BYTES": str(MAX_BODY),
    }
    with running_server(root, env=env) as server:
        client = Grpc(server, port, keys)
        yield client
        client.channel.close()


@pytest.fixture(scope="module")
def tc(g: Grpc) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{g.port}")
    yield client
    client.close()


def _rows(name: str, n: int = 5) -> npt.NDArray[np.float64]:
    frame = pd.read_csv(DEMO_MODELS / name / "1" / "background.csv").head(n)
    return frame.to_numpy(dtype=np.float64)


def _headers(g: Grpc, role: str = "predict") -> dict[str, str]:
    return {"authorization": f"Bearer {g.keys[role]}"}


def _triton_infer(
    tc: triton.InferenceServerClient, g: Grpc, name: str, x: npt.NDArray[Any], **kw: Any
) -> triton.InferResult:
    tensor = triton.InferInput("input-0", list(x.shape), "FP64")
    tensor.set_data_from_numpy(x)
    return tc.infer(name, [tensor], headers=_headers(g), **kw)


def _typed_request(name: str, x: npt.NDArray[Any], **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, **fields)
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=list(x.shape))
    tensor.contents.fp64_contents.extend(x.ravel().tolist())
    return request


def _rpc_error(call: Any, *args: Any, **kw: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kw)
    return err.value


def _http_error(g: Grpc, path: str, body: dict[str, Any], role: str = "predict") -> str:
    with g.http(role) as c:
        r = c.post(path, json=body)
    assert r.status_code >= 400, r.text
    return str(r.json()["error"])


def _v2_json(x: npt.NDArray[Any], **extra: Any) -> dict[str, Any]:
    tensor = {"name": "input-0", "shape": list(x.shape), "datatype": "FP64"}
    return {"inputs": [{**tensor, "data": x.ravel().tolist()}], **extra}


# -- health and metadata ---------------------------------------------------------------


def test_health_is_public_and_metadata_needs_a_key(
    g: Grpc, tc: triton.InferenceServerClient
) -> None:
    assert tc.is_server_live() and tc.is_server_ready()
    error = _rpc_error(g.stub.ServerMetadata, pb.ServerMetadataRequest())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and error.details() == NO_KEY
    meta = tc.get_server_metadata(headers=_headers(g))
    assert meta.name == "xserve" and meta.version
    assert tc.is_model_ready("credit-risk", headers=_headers(g))
    assert tc.is_model_ready("credit-risk", "1", headers=_headers(g))


@pytest.mark.parametrize("name", DEMOS)
def test_model_metadata_is_the_http_metadata(g: Grpc, name: str) -> None:
    answer = g.stub.ModelMetadata(pb.ModelMetadataRequest(name=name), metadata=g.auth("audit"))
    with g.http() as c:
        expected = c.get(f"/v2/models/{name}").json()
    assert answer.name == expected["name"] and list(answer.versions) == expected["versions"]
    assert answer.platform == expected["platform"]
    for got, want in ((answer.inputs, expected["inputs"]), (answer.outputs, expected["outputs"])):
        assert [(t.name, t.datatype, list(t.shape)) for t in got] == [
            (t["name"], t["datatype"], t["shape"]) for t in want
        ]


# -- inference -------------------------------------------------------------------------


@pytest.mark.parametrize("name", DEMOS)
def test_raw_infer_answers_what_v1_predict_does(
    g: Grpc, tc: triton.InferenceServerClient, name: str
) -> None:
    x = _rows(name)
    result = _triton_infer(tc, g, name, x)
    with g.http() as c:
        expected = c.post(f"/v1/models/{name}/predict", json={"instances": x.tolist()}).json()
    response = result.get_response()
    assert response.model_name == name and response.model_version == "1"
    assert len(response.raw_output_contents) == len(response.outputs)  # raw in, raw out
    labels = result.as_numpy("predict")
    assert labels is not None
    got = [v.decode() if isinstance(v, bytes) else v for v in labels.tolist()]
    if name == "diabetes":
        np.testing.assert_allclose(got, expected["predictions"], rtol=1e-12)
        assert result.as_numpy("probabilities") is None
    else:
        assert got == expected["predictions"]
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), expected["probabilities"], rtol=1e-12, atol=1e-15
        )


@pytest.mark.parametrize("name", ["breast-cancer", "credit-risk"])
def test_typed_contents_are_answered_typed(
    g: Grpc, tc: triton.InferenceServerClient, name: str
) -> None:
    x = _rows(name)
    answer = g.stub.ModelInfer(_typed_request(name, x, id="typed-1"), metadata=g.auth())
    assert answer.id == "typed-1" and not answer.raw_output_contents
    raw = _triton_infer(tc, g, name, x)
    outputs = {o.name: o for o in answer.outputs}
    predict = outputs["predict"]
    if predict.datatype == "BYTES":
        labels: list[Any] = [v.decode() for v in predict.contents.bytes_contents]
        expected = [v.decode() for v in raw.as_numpy("predict").tolist()]  # type: ignore[union-attr]
    else:
        labels = list(predict.contents.int64_contents)
        expected = raw.as_numpy("predict").tolist()  # type: ignore[union-attr]
    assert labels == expected
    probabilities = outputs["probabilities"]
    assert list(probabilities.shape) == list(raw.as_numpy("probabilities").shape)  # type: ignore[union-attr]
    np.testing.assert_array_equal(
        np.reshape(probabilities.contents.fp64_contents, list(probabilities.shape)),
        raw.as_numpy("probabilities"),
    )


@pytest.mark.parametrize("raw", [False, True])
def test_one_tensor_per_feature_with_text_categories(g: Grpc, raw: bool) -> None:
    amounts, purposes = [12.5, 80.0, 55.0], ["car", "education", "home"]
    request = pb.ModelInferRequest(model_name="loan-purpose")
    amount = request.inputs.add(name="amount", datatype="FP64", shape=[3])
    purpose = request.inputs.add(name="purpose", datatype="BYTES", shape=[3, 1])
    if raw:
        request.raw_input_contents.append(np.asarray(amounts, "<f8").tobytes())
        request.raw_input_contents.append(
            b"".join(struct.pack("<I", len(p)) + p.encode() for p in purposes)
        )
    else:
        amount.contents.fp64_contents.extend(amounts)
        purpose.contents.bytes_contents.extend(p.encode() for p in purposes)
    answer = g.stub.ModelInfer(request, metadata=g.auth())
    instances = [{"amount": a, "purpose": p} for a, p in zip(amounts, purposes, strict=True)]
    with g.http() as c:
        expected = c.post("/v1/models/loan-purpose/predict", json={"instances": instances})
    probabilities = next(o for o in answer.outputs if o.name == "probabilities")
    got = (
        np.frombuffer(answer.raw_output_contents[1], "<f8")
        if raw
        else np.asarray(probabilities.contents.fp64_contents)
    )
    np.testing.assert_allclose(got.reshape(3, 2), expected.json()["probabilities"], rtol=1e-12)

    bad = pb.ModelInferRequest(model_name="loan-purpose")
    bad.inputs.add(name="amount", datatype="FP64", shape=[3]).contents.fp64_contents.extend(amounts)
    bad.inputs.add(name="purpose", datatype="BYTES", shape=[3]).contents.bytes_contents.extend(
        [b"car", b"boat", b"home"]
    )
    error = _rpc_error(g.stub.ModelInfer, bad, metadata=g.auth())
    instances[1]["purpose"] = "boat"
    with g.http() as c:
        refused = c.post("/v1/models/loan-purpose/predict", json={"instances": instances})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == refused.json()["error"]


def test_requested_outputs_only(g: Grpc) -> None:
    request = _typed_request("credit-risk", _rows("credit-risk"))
    request.outputs.add(name="probabilities")
    answer = g.stub.ModelInfer(request, metadata=g.auth())
    assert [o.name for o in answer.outputs] == ["probabilities"]


def test_explain_gives_the_http_attributions_as_output_tensors(
    g: Grpc, tc: triton.InferenceServerClient
) -> None:
    x = _rows("credit-risk", 4)
    result = _triton_infer(tc, g, "credit-risk", x, parameters={"explain": True})
    with g.http() as c:
        r = c.post("/v2/models/credit-risk/infer", json=_v2_json(x, parameters={"explain": True}))
    assert r.status_code == 200, r.text
    expected = {o["name"]: o for o in r.json()["outputs"]}
    for name in ("attributions", "base_values"):
        got = result.as_numpy(name)
        assert got is not None and list(got.shape) == expected[name]["shape"]
        np.testing.assert_allclose(got.ravel(), expected[name]["data"], rtol=1e-12)
        params = result.get_output(name).parameters  # type: ignore[union-attr]
        assert params["method"].string_param == expected[name]["parameters"]["method"]


# -- errors: the HTTP status as a gRPC code, with HTTP's message --------------------------


def test_unknown_model_and_version_are_not_found_with_the_http_message(g: Grpc) -> None:
    x = _rows("credit-risk", 1)
    for name, version in (("no-such-model", ""), ("credit-risk", "9")):
        error = _rpc_error(
            g.stub.ModelInfer, _typed_request(name, x, model_version=version), metadata=g.auth()
        )
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details() == _http_error(g, path, _v2_json(x))
        trailing = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
        assert trailing["xserve-error-code"] == "model_not_found"
    error = _rpc_error(g.stub.ModelReady, pb.ModelReadyRequest(name="nope"), metadata=g.auth())
    assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "change, http_body",
    [
        ("wrong_shape", {"shape": [1, 3], "data": [1.0, 2.0, 3.0]}),
        ("explain_text", {"parameters": {"explain": "yes"}}),
        ("unknown_output", {"outputs": [{"name": "nope"}]}),
    ],
)
def test_bad_requests_are_invalid_argument_with_the_http_message(
    g: Grpc, change: str, http_body: dict[str, Any]
) -> None:
    x = _rows("credit-risk", 1)
    request = _typed_request("credit-risk", x)
    body = _v2_json(x)
    if change == "wrong_shape":
        request = _typed_request("credit-risk", np.array([[1.0, 2.0, 3.0]]))
        body = _v2_json(np.array([[1.0, 2.0, 3.0]]))
    elif change == "explain_text":
        request.parameters["explain"].string_param = "yes"
        body["parameters"] = http_body["parameters"]
    else:
        request.outputs.add(name="nope")
        body["outputs"] = http_body["outputs"]
    error = _rpc_error(g.stub.ModelInfer, request, metadata=g.auth())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == _http_error(g, "/v2/models/credit-risk/infer", body)


def test_malformed_tensors_are_invalid_argument(g: Grpc) -> None:
    x = _rows("credit-risk", 2)
    short = _typed_request("credit-risk", x)
    short.inputs[0].shape[:] = [3, 8]  # 16 values for 24 elements
    raw = pb.ModelInferRequest(model_name="credit-risk", raw_input_contents=[b"\0" * 10])
    raw.inputs.add(name="input-0", datatype="FP64", shape=[1, 8])
    narrow = pb.ModelInferRequest(model_name="credit-risk")
    narrow.inputs.add(name="input-0", datatype="INT8", shape=[1, 8]).contents.int_contents.extend(
        [300] * 8
    )
    for request, message in (
        (short, "shape [3, 8] has 24 elements, got 16"),
        (raw, "takes 64 bytes, the raw data has 10"),
        (narrow, "inputs.input-0[0][0]: 300 does not fit INT8"),
        (pb.ModelInferRequest(model_name="credit-risk"), "inputs: expected a non-empty list"),
    ):
        error = _rpc_error(g.stub.ModelInfer, request, metadata=g.auth())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.details()


def test_size_limits_are_resource_exhausted(g: Grpc) -> None:
    too_many = np.ones((10_001, 8))  # XSERVE_MAX_INSTANCES is 10000
    error = _rpc_error(
        g.stub.ModelInfer, _typed_request("credit-risk", too_many), metadata=g.auth()
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == _http_error(g, "/v2/models/credit-risk/infer", _v2_json(too_many))
    huge = pb.ModelInferRequest(model_name="credit-risk", raw_input_contents=[b"\0" * MAX_BODY])
    huge.inputs.add(name="input-0", datatype="FP64", shape=[MAX_BODY // 64, 8])
    error = _rpc_error(g.stub.ModelInfer, huge, metadata=g.auth())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # gzip makes it a few kB on the wire: the bound holds for the message, not the bytes sent
    error = _rpc_error(
        g.stub.ModelInfer, huge, metadata=g.auth(), compression=grpc.Compression.Gzip
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_keys_and_roles_as_over_http(g: Grpc, tc: triton.InferenceServerClient) -> None:
    request = _typed_request("credit-risk", _rows("credit-risk", 1))
    body = _v2_json(_rows("credit-risk", 1))
    error = _rpc_error(g.stub.ModelInfer, request)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and error.details() == NO_KEY
    error = _rpc_error(g.stub.ModelInfer, request, metadata=[("authorization", "Bearer wrong")])
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "the API key is not valid"
    error = _rpc_error(g.stub.ModelInfer, request, metadata=g.auth("audit"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == _http_error(g, "/v2/models/credit-risk/infer", body, "audit")
    with pytest.raises(InferenceServerException) as err:  # tritonclient says the same
        tc.get_model_metadata("credit-risk")
    assert "UNAUTHENTICATED" in str(err.value.status()) and NO_KEY in str(err.value.message())


# -- audit ------------------------------------------------------------------------------


def test_every_infer_is_audited_with_its_caller_and_request_id(g: Grpc) -> None:
    x = _rows("credit-risk", 2)
    answer, call = g.stub.ModelInfer.with_call(
        _typed_request("credit-risk", x, model_version="1", id="audited-1"), metadata=g.auth()
    )
    request_id = dict(call.initial_metadata())["x-request-id"]
    assert answer.parameters["request_id"].string_param == request_id
    with g.http("audit") as c:
        records = c.get("/v1/audit/records", params={"request_id": request_id}).json()["records"]
    assert len(records) == 1
    record = records[0]
    assert record["kind"] == "infer" and record["caller"] == "predict-user"
    assert record["model"] == "credit-risk" and record["version"] == "1"
    labels = list(next(o for o in answer.outputs if o.name == "predict").contents.int64_contents)
    assert record["output"]["predictions"] == labels
    assert record["client_id"] == "audited-1" and len(record["input"]) == 2


# -- metrics ----------------------------------------------------------------------------


def _count(metrics_text: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("xserve_requests_total{") and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_calls_are_counted_in_metrics_by_method_and_http_status(g: Grpc) -> None:
    def scrape() -> str:
        return httpx.get(f"{g.server.url}/metrics", timeout=30).text

    before = scrape()
    x = _rows("credit-risk", 1)
    for _ in range(3):
        g.stub.ModelInfer(_typed_request("credit-risk", x), metadata=g.auth())
    _rpc_error(g.stub.ModelInfer, _typed_request("no-such-model", x), metadata=g.auth())
    g.stub.ModelMetadata(pb.ModelMetadataRequest(name="credit-risk"), metadata=g.auth())
    after = scrape()
    ok = {"model": "credit-risk", "version": "1", "endpoint": "ModelInfer", "status": "200"}
    assert _count(after, **ok) - _count(before, **ok) == 3
    missing = {"endpoint": "ModelInfer", "status": "404"}
    assert _count(after, **missing) - _count(before, **missing) == 1
    meta = {"model": "credit-risk", "endpoint": "ModelMetadata", "status": "200"}
    assert _count(after, **meta) - _count(before, **meta) == 1


# -- kserve's client ---------------------------------------------------------------------


def test_kserve_grpc_client_unchanged(g: Grpc, tc: triton.InferenceServerClient) -> None:
    x = _rows("credit-risk", 3)
    done = subprocess.run(
        [
            sys.executable,
            str(HERE / "kserve_client.py"),
            str(g.port),
            g.keys["predict"],
            "credit-risk",
            json.dumps(x.tolist()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["live"] and out["ready"] and out["model_ready"]
    expected = _triton_infer(tc, g, "credit-risk", x, parameters={"explain": True})
    for form in ("typed", "raw"):
        answer = out[form]
        assert answer["id"] == "k-1" and answer["model_version"] == "1"
        for name in ("predict", "probabilities", "attributions", "base_values"):
            np.testing.assert_allclose(
                np.asarray(answer["outputs"][name]).ravel(),
                expected.as_numpy(name).ravel(),  # type: ignore[union-attr]
                rtol=1e-12,
            )
    assert NO_KEY in out["no_key_error"]
