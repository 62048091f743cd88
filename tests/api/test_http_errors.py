"""Every caller mistake gets a 4xx in the error shape ``{"error", "code"}``, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import xgboost as xgb
import yaml

from tests.server import Server, copy_demo_models, running_server

PREDICT = "/v1/models/credit-risk/predict"
ROW = {
    "age": 61,
    "annual_income": 60500,
    "debt_to_income": 0.2419,
    "credit_utilization": 0.6015,
    "num_open_accounts": 6,
    "delinquencies_2y": 0,
    "months_employed": 134,
    "loan_amount": 4600,
}
VALUES = list(ROW.values())
MAX_BODY = 4096
MAX_INSTANCES = 5


def error_body(r: httpx.Response, status: int, code: str, *fragments: str) -> str:
    """Assert the error shape; return the message."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "code"}, body
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    return str(body["error"])


def with_value(name: str, value: Any) -> dict[str, Any]:
    return {**ROW, name: value}


def without(name: str) -> dict[str, Any]:
    return {k: v for k, v in ROW.items() if k != name}


BAD_INSTANCES = {
    "missing feature": ([ROW, without("loan_amount")], ["instances[1].loan_amount", "missing"]),
    "unknown feature": ([{**ROW, "zip_code": 90210}], ["instances[0].zip_code", "unknown"]),
    "non-numeric string": ([with_value("annual_income", "lots")], ["instances[0].annual_income"]),
    "bool for numeric": ([with_value("debt_to_income", True)], ["instances[0].debt_to_income"]),
    "null": ([with_value("loan_amount", None)], ["instances[0].loan_amount", "null"]),
    "non-integral integer": ([with_value("age", 30.5)], ["instances[0].age", "integer"]),
    "integer out of float range": ([with_value("age", 10**400)], ["instances[0].age", "range"]),
    "short row": ([VALUES, VALUES[:-1]], ["instances[1]", "expected 8 values", "got 7"]),
    "long row": ([[*VALUES, 1]], ["instances[0]", "got 9"]),
    "row with a string": ([["x", *VALUES[1:]]], ["instances[0].age"]),
    "object instances": (ROW, ["instances"]),
    "string instances": ("rows", ["instances"]),
    "empty list": ([], ["instances", "at least one"]),
    "scalar instance": ([ROW, 42], ["instances[1]"]),
    "nested too deep": ([[VALUES]], ["instances[0]"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INSTANCES))
def test_bad_instances_are_422_naming_the_field(server: Server, case: str) -> None:
    instances, fragments = BAD_INSTANCES[case]
    body = json.dumps({"instances": instances})  # json.dumps: httpx's json= refuses big ints
    with server.client() as c:
        r = c.post(PREDICT, content=body, headers={"content-type": "application/json"})
        pinned = c.post(
            "/v1/models/credit-risk/versions/1/predict",
            content=body,
            headers={"content-type": "application/json"},
        )
    error_body(r, 422, "invalid_input", *fragments)
    assert pinned.json() == r.json()


def test_missing_instances_key(server: Server) -> None:
    with server.client() as c:
        r = c.post(PREDICT, json={"rows": [ROW]})
    error_body(r, 422, "invalid_input", "instances")


@pytest.mark.parametrize("body", [[ROW], "instances", 3, None])
def test_body_that_is_not_an_object_is_422(server: Server, body: Any) -> None:
    with server.client() as c:
        r = c.post(PREDICT, content=json.dumps(body), headers={"content-type": "application/json"})
    error_body(r, 422, "invalid_input", "body")


@pytest.mark.parametrize(
    "token",
    ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 5000],
    ids=["NaN", "Infinity", "-Infinity", "1e400", "5000-digit integer"],
)
def test_non_finite_numbers_are_refused_not_500(server: Server, token: str) -> None:
    # Not valid JSON, or out of range: refused by the parser or by validation.
    body = f'{{"instances": [[{token}, 60500, 0.24, 0.6, 6, 0, 134, 4600]]}}'
    with server.client() as c:
        r = c.post(PREDICT, content=body, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    error_body(r, r.status_code, "bad_request" if r.status_code == 400 else "invalid_input")


@pytest.mark.parametrize("body", ['{"instances": [', "{'instances': []}", "", "\xff"])
def test_malformed_json_is_400(server: Server, body: str) -> None:
    with server.client() as c:
        r = c.post(
            PREDICT, content=body.encode("latin-1"), headers={"content-type": "application/json"}
        )
    error_body(r, 400, "bad_request")


def test_good_request_still_answers_after_errors(server: Server) -> None:
    with server.client() as c:
        r = c.post(PREDICT, json={"instances": [ROW, VALUES]})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2


@pytest.mark.parametrize(
    "path", ["/v1/models/no-such-model/predict", "/v1/models/no-such-model/versions/1/predict"]
)
def test_unknown_model_is_404(server: Server, path: str) -> None:
    with server.client() as c:
        r = c.post(path, json={"instances": [ROW]})
    error_body(r, 404, "model_not_found", "no-such-model")


def test_unknown_model_metadata_is_404(server: Server) -> None:
    with server.client() as c:
        r = c.get("/v1/models/no-such-model")
    error_body(r, 404, "model_not_found", "no-such-model")


@pytest.mark.parametrize("version", ["9", "0", "latest"])
def test_unknown_version_is_404(server: Server, version: str) -> None:
    with server.client() as c:
        r = c.post(f"/v1/models/credit-risk/versions/{version}/predict", json={"instances": [ROW]})
    error_body(r, 404, "model_not_found", repr(version))


def test_get_on_a_predict_path_is_405(server: Server) -> None:
    with server.client() as c:
        r = c.get(PREDICT)
        pinned = c.get("/v1/models/credit-risk/versions/1/predict")
    error_body(r, 405, "method_not_allowed")
    error_body(pinned, 405, "method_not_allowed")


def test_unknown_path_is_404_in_the_error_shape(server: Server) -> None:
    with server.client() as c:
        r = c.get("/v1/no/such/path")
    error_body(r, 404, "not_found")


# -- a second server: small limits, and a model with every feature type ------------------

MIXED_FEATURES = [
    {"name": "amount", "type": "numeric", "nullable": True},
    {"name": "owner", "type": "boolean"},
    {"name": "region", "type": "categorical", "categories": ["north", "south", "east"]},
]


def _add_mixed_model(models: Path) -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=200), rng.integers(0, 2, 200), rng.integers(0, 3, 200)])
    y = (x[:, 0] + x[:, 1] - x[:, 2] > 0).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(x, label=y), num_boost_round=5
    )
    folder = models / "mixed" / "1"
    folder.mkdir(parents=True)
    booster.save_model(str(folder / "model.json"))
    manifest = {"artifact": "model.json", "task": "classification", "features": MIXED_FEATURES}
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest))


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = copy_demo_models(tmp_path_factory.mktemp("small") / "models")
    _add_mixed_model(models)
    env = {"XSERVE_MAX_BODY_BYTES": str(MAX_BODY), "XSERVE_MAX_INSTANCES": str(MAX_INSTANCES)}
    with running_server(models, env=env) as srv:
        yield srv


def test_body_over_the_limit_is_413(small_server: Server) -> None:
    body = json.dumps({"instances": [VALUES] * 200})
    assert len(body) > MAX_BODY
    with small_server.client() as c:
        r = c.post(PREDICT, content=body, headers={"content-type": "application/json"})
        ok = c.post(PREDICT, json={"instances": [VALUES]})
    error_body(r, 413, "payload_too_large")
    assert ok.status_code == 200, ok.text


def test_too_many_instances_is_413(small_server: Server) -> None:
    with small_server.client() as c:
        r = c.post(PREDICT, json={"instances": [VALUES] * (MAX_INSTANCES + 1)})
        ok = c.post(PREDICT, json={"instances": [VALUES] * MAX_INSTANCES})
    error_body(r, 413, "payload_too_large", str(MAX_INSTANCES + 1))
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == MAX_INSTANCES


MIXED_OK = {"amount": 0.5, "owner": True, "region": "south"}
BAD_MIXED = {
    "category not listed": ({**MIXED_OK, "region": "west"}, ["instances[0].region", "'west'"]),
    "category index out of range": ({**MIXED_OK, "region": 3}, ["instances[0].region"]),
    "boolean as string": ({**MIXED_OK, "owner": "yes"}, ["instances[0].owner"]),
    "boolean as 2": ({**MIXED_OK, "owner": 2}, ["instances[0].owner"]),
    "null for boolean": ({**MIXED_OK, "owner": None}, ["instances[0].owner", "null"]),
}


@pytest.mark.parametrize("case", sorted(BAD_MIXED))
def test_bad_typed_values_are_422(small_server: Server, case: str) -> None:
    instance, fragments = BAD_MIXED[case]
    with small_server.client() as c:
        r = c.post("/v1/models/mixed/predict", json={"instances": [instance]})
    error_body(r, 422, "invalid_input", *fragments)


def test_typed_values_are_encoded(small_server: Server) -> None:
    instances = [MIXED_OK, {"amount": None, "owner": False, "region": "east"}, [1.5, 1, 0]]
    with small_server.client() as c:
        r = c.post("/v1/models/mixed/predict", json={"instances": instances})
        by_index = c.post(
            "/v1/models/mixed/predict",
            json={"instances": [{**MIXED_OK, "region": 1}, [0.5, True, "south"]]},
        )
    assert r.status_code == 200, r.text
    probs = np.array(r.json()["probabilities"])
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    booster = xgb.Booster()
    booster.load_model(str(small_server.models_dir / "mixed" / "1" / "model.json"))
    x = np.array([[0.5, 1, 1], [np.nan, 0, 2], [1.5, 1, 0]], dtype=np.float64)
    np.testing.assert_allclose(probs[:, 1], booster.predict(xgb.DMatrix(x)), rtol=1e-6)
    assert by_index.status_code == 200
    assert by_index.json()["probabilities"] == [r.json()["probabilities"][0]] * 2
