"""`?explain=true` over HTTP against a real server: the explanation's JSON shape,
additivity to the returned numbers, reason codes, parameters and errors."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.server import DEMO_MODELS, Server, copy_demo_models, running_server
from xserve.errors import ExplainerError
from xserve.explainers.attach import attach_inline
from xserve.explainers.base import Attribution
from xserve.repository.repository import ModelRepository
from xserve.serving.dataplane import DataPlane
from xserve.serving.outcome import UNSET, Answer
from xserve.serving.prediction import score
from xserve.serving.request import DecisionRequest
from xserve.settings import Settings

RTOL = 1e-5


def demo(name: str) -> tuple[dict[str, Any], pd.DataFrame]:
    folder = DEMO_MODELS / name / "1"
    manifest = yaml.safe_load((folder / "xserve.yaml").read_text())
    return manifest, pd.read_csv(folder / "background.csv")


def rel_gap(actual: float, expected: float) -> float:
    return abs(actual - expected) / max(abs(expected), 1.0)


def logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def total(explanation: dict[str, Any]) -> float:
    return float(explanation["base_value"] + sum(explanation["values"].values()))


def post(server: Server, path: str, rows: pd.DataFrame, **params: Any) -> Any:
    with server.client() as c:
        return c.post(path, params=params, json={"instances": rows.to_dict(orient="records")})


def check_reason_codes(
    explanation: dict[str, Any], adverse_push: dict[str, float], texts: dict[str, str], limit: int
) -> None:
    """Reasons: the positive pushes toward the adverse outcome, most first, at most ``limit``."""
    codes = explanation["reason_codes"]
    expected = sorted((f for f, v in adverse_push.items() if v > 0), key=lambda f: -adverse_push[f])
    assert [c["feature"] for c in codes] == expected[:limit]
    for c in codes:
        assert c["contribution"] > 0
        assert c["contribution"] == pytest.approx(adverse_push[c["feature"]], rel=1e-12)
        assert c["reason"] == texts[c["feature"]]


# --- credit-risk: XGBoost, margin space


def test_credit_risk_explanations(server: Server) -> None:
    manifest, frame = demo("credit-risk")
    rows = frame.head(40)
    r = post(server, "/v1/models/credit-risk/predict", rows, explain="true")
    assert r.status_code == 200, r.text
    body = r.json()
    names = [f["name"] for f in manifest["features"]]
    assert len(body["explanations"]) == len(rows) == len(body["predictions"])
    assert set(body["predictions"]) == {0, 1}  # both classes get explained below
    adverse = manifest["classes"].index(manifest["adverse_class"])
    for e, label, probs in zip(
        body["explanations"], body["predictions"], body["probabilities"], strict=True
    ):
        assert e["method"] == "tree_shap" and e["output"] == "margin"
        assert e["class"] == label
        assert list(e["values"]) == names
        k = manifest["classes"].index(e["class"])
        # base + sum(values) is the log-odds of the explained class's returned probability
        assert rel_gap(total(e), logit(probs[k])) <= RTOL
        assert len(e["reason_codes"]) <= 4
        # the log-odds of the adverse class: the explained one's, or its negation
        sign = 1.0 if k == adverse else -1.0
        push = {f: sign * v for f, v in e["values"].items()}
        check_reason_codes(e, push, manifest["reason_codes"], 4)


def test_reasons_parameter(server: Server) -> None:
    _, frame = demo("credit-risk")
    rows = frame.head(10)
    full = post(server, "/v1/models/credit-risk/predict", rows, explain="true").json()
    two = post(server, "/v1/models/credit-risk/predict", rows, explain="true", reasons=2).json()
    none = post(server, "/v1/models/credit-risk/predict", rows, explain="true", reasons=0).json()
    assert any(len(e["reason_codes"]) > 2 for e in full["explanations"])
    for f, t, n in zip(
        full["explanations"], two["explanations"], none["explanations"], strict=True
    ):
        assert t["reason_codes"] == f["reason_codes"][:2]
        assert n["reason_codes"] == []
        assert t["values"] == f["values"]


def test_class_parameter(server: Server) -> None:
    _, frame = demo("credit-risk")
    rows = frame.head(20)
    default = post(server, "/v1/models/credit-risk/predict", rows, explain="true").json()
    one = post(
        server, "/v1/models/credit-risk/predict", rows, explain="true", **{"class": 1}
    ).json()
    assert 0 in default["predictions"]
    for d, e, probs in zip(
        default["explanations"], one["explanations"], one["probabilities"], strict=True
    ):
        assert e["class"] == 1
        assert rel_gap(total(e), logit(probs[1])) <= RTOL
        sign = 1.0 if d["class"] == 1 else -1.0
        assert e["values"] == pytest.approx(
            {f: sign * v for f, v in d["values"].items()}, rel=1e-12
        )
        assert e["base_value"] == pytest.approx(sign * d["base_value"], rel=1e-12)
        # the adverse class does not change with the explained one
        assert e["reason_codes"] == d["reason_codes"]


@pytest.mark.parametrize(
    ("params", "word"), [({"class": 9}, "class"), ({"reasons": -1}, "reasons")]
)
def test_bad_parameters_are_422(server: Server, params: dict[str, Any], word: str) -> None:
    _, frame = demo("credit-risk")
    r = post(server, "/v1/models/credit-risk/predict", frame.head(2), explain="true", **params)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "invalid_input"
    assert word in body["error"]


def test_versioned_path_explains_the_same(server: Server) -> None:
    _, frame = demo("credit-risk")
    rows = frame.head(5)
    latest = post(server, "/v1/models/credit-risk/predict", rows, explain="true").json()
    pinned = post(server, "/v1/models/credit-risk/versions/1/predict", rows, explain="true")
    assert pinned.status_code == 200, pinned.text
    body = pinned.json()
    assert body["version"] == "1"
    assert body["explanations"] == latest["explanations"]
    assert body["probabilities"] == latest["probabilities"]


def test_no_explanations_unless_asked(server: Server) -> None:
    _, frame = demo("credit-risk")
    body = post(server, "/v1/models/credit-risk/predict", frame.head(3)).json()
    assert "explanations" not in body
    assert len(body["predictions"]) == 3


# --- diabetes: linear, value space; breast-cancer: random forest, probability space


def test_diabetes_linear_shap_adds_up_to_the_prediction(server: Server) -> None:
    manifest, frame = demo("diabetes")
    r = post(server, "/v1/models/diabetes/predict", frame.head(30), explain="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert "probabilities" not in body
    names = [f["name"] for f in manifest["features"]]
    descriptions = {f["name"]: f["description"] for f in manifest["features"]}
    texts = {n: d[:1].upper() + d[1:] for n, d in descriptions.items()}  # no reason texts set
    for e, prediction in zip(body["explanations"], body["predictions"], strict=True):
        assert e["method"] == "linear_shap" and e["output"] == "value"
        assert e["class"] is None
        assert list(e["values"]) == names
        assert rel_gap(total(e), prediction) <= RTOL
        check_reason_codes(e, e["values"], texts, 4)  # adverse_direction: higher


def test_breast_cancer_tree_shap_adds_up_to_the_probability(server: Server) -> None:
    manifest, frame = demo("breast-cancer")
    r = post(server, "/v1/models/breast-cancer/predict", frame.head(30), explain="true")
    assert r.status_code == 200, r.text
    body = r.json()
    classes = manifest["classes"]
    assert set(body["predictions"]) == set(classes)
    for e, label, probs in zip(
        body["explanations"], body["predictions"], body["probabilities"], strict=True
    ):
        assert e["method"] == "tree_shap" and e["output"] == "probability"
        assert e["class"] == label
        assert rel_gap(total(e), probs[classes.index(label)]) <= RTOL
        assert len(e["reason_codes"]) <= 4
    # reasons push toward the adverse class (malignant): ask for it to see its values
    malignant = post(
        server,
        "/v1/models/breast-cancer/predict",
        frame.head(30),
        explain="true",
        **{"class": "malignant"},
    ).json()
    descriptions = {f["name"]: f["description"] for f in manifest["features"]}
    for e, probs in zip(malignant["explanations"], malignant["probabilities"], strict=True):
        assert e["class"] == "malignant"
        assert rel_gap(total(e), probs[0]) <= RTOL
        check_reason_codes(e, e["values"], descriptions, 4)


# --- a version that may not be explained inline


@pytest.fixture(scope="module")
def no_inline_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("noinline")
    root = copy_demo_models(tmp / "models")
    v2 = root / "credit-risk" / "2"
    shutil.copytree(root / "credit-risk" / "1", v2)
    manifest = yaml.safe_load((v2 / "xserve.yaml").read_text())
    manifest["explain"]["inline"] = "none"
    (v2 / "xserve.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    env = {"XSERVE_AUDIT_URL": f"sqlite:///{tmp}/audit.db", "XSERVE_CACHE_URL": str(tmp / "cache")}
    with running_server(root, env=env) as srv:
        yield srv


def test_inline_none_is_not_explainable(no_inline_server: Server) -> None:
    _, frame = demo("credit-risk")
    rows = frame.head(3)
    r = post(no_inline_server, "/v1/models/credit-risk/predict", rows, explain="true")
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "not_explainable"
    assert "inline" in r.json()["error"]
    plain = post(no_inline_server, "/v1/models/credit-risk/predict", rows)
    assert plain.status_code == 200, plain.text
    assert plain.json()["version"] == "2" and len(plain.json()["predictions"]) == 3
    with no_inline_server.client() as c:
        meta = c.get("/v1/models/credit-risk").json()
    assert meta["explain"]["inline"] is None and "none" in meta["explain"]["inline_unavailable"]
    # version 1 of the same model still explains
    v1 = post(no_inline_server, "/v1/models/credit-risk/versions/1/predict", rows, explain="true")
    assert v1.status_code == 200, v1.text
    assert len(v1.json()["explanations"]) == 3


# --- an explainer failing at request time (in-process: no monkeypatching across processes)


class Broken:
    method = "tree_shap"
    output = "margin"

    def __init__(self) -> None:
        self.calls = 0

    def explain(self, x: np.ndarray) -> Attribution:
        self.calls += 1
        raise RuntimeError("tree walk went wrong")

    def model_output(self, x: np.ndarray) -> np.ndarray:
        raise AssertionError("not used")


def test_a_failing_explainer_is_a_500_naming_it_and_predict_still_works(tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(DEMO_MODELS / "credit-risk", root / "credit-risk")
    broken = Broken()
    # The serving layer attaches inline explainers through the load hook: attach a broken one.
    repository = ModelRepository(root, on_load=[lambda m: replace(m, inline=broken)])
    repository.scan()
    plane = DataPlane(repository, Settings())
    model = repository.get("credit-risk")
    _, frame = demo("credit-risk")
    instances = frame.head(3).to_dict(orient="records")

    def predict(explain: bool) -> Answer:
        request = DecisionRequest("predict", "credit-risk", instances=instances, explain=explain)
        return asyncio.run(plane.decide(request)).answered()

    with pytest.raises(ExplainerError) as caught:
        predict(explain=True)
    assert caught.value.status == 500
    assert caught.value.code == "explainer_error"
    assert "tree_shap" in caught.value.message and "RuntimeError" in caught.value.message
    assert broken.calls >= 1
    with pytest.raises(ExplainerError, match="tree_shap"):
        score(model, frame.head(1).to_numpy(dtype=np.float64), explain=True)

    answer = predict(explain=False)
    assert isinstance(answer.predictions, list) and len(answer.predictions) == 3
    assert answer.explanations is UNSET
    expected = model.runtime.predict(frame.head(3).to_numpy(dtype=np.float64))
    np.testing.assert_allclose(answer.probabilities, expected)

    # A fresh repository with the real explainer: explanations work again.
    repository = ModelRepository(root, on_load=[attach_inline])
    repository.scan()
    plane = DataPlane(repository, Settings())
    again = predict(explain=True)
    assert isinstance(again.explanations, list) and len(again.explanations) == 3
