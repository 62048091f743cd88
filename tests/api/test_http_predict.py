"""Predictions over HTTP from a real server equal the native libraries' on every flavor."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.native import native_outputs
from tests.server import DEMO_MODELS, DEMOS, Server

NAMES = sorted(DEMOS)


def _demo(name: str) -> tuple[dict[str, Any], pd.DataFrame]:
    folder = DEMO_MODELS / name / DEMOS[name]
    manifest = yaml.safe_load((folder / "xserve.yaml").read_text())
    return manifest, pd.read_csv(folder / "background.csv")


@pytest.mark.parametrize("explain", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_predictions_equal_native_library(server: Server, name: str, explain: bool) -> None:
    """With explanations too: some explainers derive predictions from exact attributions."""
    manifest, frame = _demo(name)
    rows = frame.head(50)
    with server.client() as c:
        r = c.post(
            f"/v1/models/{name}/predict",
            params={"explain": explain},
            json={"instances": rows.values.tolist(), "id": "abc"},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == name and body["version"] == "1" and body["id"] == "abc"
    assert len(body["request_id"]) >= 16
    expected = native_outputs(
        manifest["flavor"],
        DEMO_MODELS / name / DEMOS[name] / manifest["artifact"],
        rows.values.astype(np.float64),
    )
    if manifest["task"] == "classification":
        probs = np.array(body["probabilities"])
        np.testing.assert_allclose(probs, expected, rtol=1e-6, atol=1e-7)
        classes = manifest["classes"]
        assert body["predictions"] == [classes[i] for i in expected.argmax(axis=1)]
    else:
        assert "probabilities" not in body
        np.testing.assert_allclose(body["predictions"], expected, rtol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_objects_and_rows_give_the_same_answer(server: Server, name: str) -> None:
    _, frame = _demo(name)
    rows = frame.head(5)
    with server.client() as c:
        by_row = c.post(
            f"/v1/models/{name}/predict", json={"instances": rows.values.tolist()}
        ).json()
        by_name = c.post(
            f"/v1/models/{name}/predict", json={"instances": rows.to_dict(orient="records")}
        ).json()
        pinned = c.post(
            f"/v1/models/{name}/versions/1/predict",
            json={"instances": rows.to_dict(orient="records")},
        ).json()
    assert by_row["predictions"] == by_name["predictions"] == pinned["predictions"]
    assert by_row.get("probabilities") == by_name.get("probabilities")


def test_model_listing_and_metadata(server: Server) -> None:
    with server.client() as c:
        listing = c.get("/v1/models").json()["models"]
        meta = c.get("/v1/models/credit-risk").json()
    assert sorted(m["name"] for m in listing) == NAMES
    for m in listing:
        assert m["serving_version"] == "1"
        assert m["versions"][0]["state"] == "ready"
    manifest, _ = _demo("credit-risk")
    assert meta["task"] == "classification" and meta["flavor"] == "xgboost"
    assert [f["name"] for f in meta["features"]] == [f["name"] for f in manifest["features"]]
    assert meta["classes"] == [0, 1]
    assert meta["artifact_sha256"] == manifest["sha256"]["model.json"]


def test_health_and_docs(server: Server) -> None:
    with server.client() as c:
        assert c.get("/health/live").status_code == 200
        assert c.get("/health/ready").json() == {"ready": True}
        spec = c.get("/docs/openapi.json")
        assert spec.status_code == 200
        assert "/v1/models/{model}/predict" in spec.json()["paths"]
