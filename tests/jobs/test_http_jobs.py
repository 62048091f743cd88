"""Explanation jobs over HTTP against real servers: the 200/202 flow, ``?wait``, the cache,
errors, Redis down, a real Celery worker, and ``xserve precompute``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.jobs_support import HTTP_DB, closed_port, flushed_redis, running_worker, worker_env
from tests.server import DEMO_MODELS, Server, copy_demo_models, running_server

pytestmark = pytest.mark.http

FAST_SHAP = {"nsamples": 80, "background": 8}


def rows(name: str, idx: list[int]) -> pd.DataFrame:
    return pd.read_csv(DEMO_MODELS / name / "1" / "background.csv").iloc[idx]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An in-process server, with a version whose artifact is changed after it loaded."""
    root = tmp_path_factory.mktemp("http-jobs")
    models = copy_demo_models(root / "models")
    env = {"XSERVE_CACHE_URL": str(root / "cache"), "XSERVE_JOB_WORKERS": "1"}
    with running_server(models, env=env) as server:
        yield server


def poll(c: httpx.Client, url: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = c.get(url)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] in ("queued", "running", "succeeded", "failed")
        if body["status"] in ("succeeded", "failed"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_explain_answers_202_then_the_job_succeeds_then_200_from_the_cache(srv: Server) -> None:
    frame = rows("credit-risk", [0, 1])
    request = {
        "instances": frame.values.tolist(),
        "method": "kernel_shap",
        "params": FAST_SHAP,
        "id": "req-7",
    }
    with srv.client() as c:
        r = c.post("/v1/models/credit-risk/explain", json=request)
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "queued" and body["status_url"] == f"/v1/jobs/{body['job_id']}"
        assert r.headers["location"] == body["status_url"]
        assert r.headers["server-timing"].startswith("app;dur=")
        done = poll(c, body["status_url"])
        assert done["status"] == "succeeded", done
        result = done["result"]
        assert result["model"] == "credit-risk" and result["version"] == "1"
        assert result["request_id"] == body["job_id"] and result["id"] == "req-7"
        assert result["cached"] == [False, False] and "inputs" not in result
        probabilities = c.post(
            "/v1/models/credit-risk/predict", json={"instances": frame.values.tolist()}
        ).json()["probabilities"]
        for e, p in zip(result["explanations"], probabilities, strict=True):
            k = int(np.argmax(p))
            assert e["class"] == k and e["output"] == "probability"
            assert e["base_value"] + sum(e["values"].values()) == pytest.approx(p[k], rel=1e-5)
            assert {rc["feature"] for rc in e["reason_codes"]} <= set(frame.columns)
        # The same rows again, as objects this time: every one cached, 200 at once.
        objects = {**request, "instances": frame.to_dict(orient="records")}
        again = c.post("/v1/models/credit-risk/explain", json=objects)
        assert again.status_code == 200, again.text
        assert again.json()["cached"] == [True, True]
        assert again.json()["explanations"] == result["explanations"]
        assert again.json()["id"] == "req-7"
        stats = c.get("/v1/cache/stats").json()
        assert stats["backend"] == "disk" and stats["hits"] >= 2 and stats["entries"] >= 2


def test_wait_answers_200_and_the_class_is_chosen_when_rendering(srv: Server) -> None:
    frame = rows("iris", [10, 70, 140])
    request = {"instances": frame.values.tolist(), "method": "lime", "params": {"num_samples": 300}}
    with srv.client() as c:
        r = c.post("/v1/models/iris/explain?wait=60", json=request)
        assert r.status_code == 200, r.text
        first = r.json()
        assert first["cached"] == [False] * 3 and first["method"] == "lime"
        predicted = c.post("/v1/models/iris/predict", json=request).json()["predictions"]
        assert [e["class"] for e in first["explanations"]] == predicted  # by default
        assert all({"intercept", "score", "conditions"} <= set(e) for e in first["explanations"])
        chosen = c.post("/v1/models/iris/explain?class=virginica", json=request)
        assert chosen.status_code == 200 and chosen.json()["cached"] == [True] * 3
        assert {e["class"] for e in chosen.json()["explanations"]} == {"virginica"}
        assert chosen.json()["explanations"][2] == first["explanations"][2]


def test_anchors_and_inline_methods_through_explain(srv: Server) -> None:
    frame = rows("credit-risk", [3])
    with srv.client() as c:
        anchors = c.post(
            "/v1/models/credit-risk/versions/1/explain?wait=60",
            json={
                "instances": frame.values.tolist(),
                "method": "anchors",
                "params": {"threshold": 0.9},
            },
        )
        assert anchors.status_code == 200, anchors.text
        a = anchors.json()["explanations"][0]
        assert a["method"] == "anchors" and a["anchor"] and 0.9 <= a["precision"] <= 1
        inline = c.post(
            "/v1/models/credit-risk/explain",
            json={"instances": frame.values.tolist(), "method": "tree_shap"},
        )
        assert inline.status_code == 200, inline.text
        e = inline.json()["explanations"][0]
        assert e["method"] == "tree_shap" and e["output"] == "margin"
        assert inline.json()["cached"] == [False]
        default = c.post(
            "/v1/models/credit-risk/explain", json={"instances": frame.values.tolist()}
        )
        assert default.status_code == 200 and default.json()["method"] == "tree_shap"
        meta = c.get("/v1/models/credit-risk").json()["explain"]["job_methods"]
        assert [m["method"] for m in meta] == ["kernel_shap", "lime", "anchors"]
        assert all(m["available"] for m in meta)


@pytest.mark.parametrize(
    ("model", "request_body", "query", "code", "message"),
    [
        ("iris", {"method": "shapley"}, "", "invalid_input", "'shapley' is not one of"),
        (
            "iris",
            {"method": "kernel_shap", "params": {"nsamples": -1}},
            "",
            "invalid_input",
            "params.nsamples",
        ),
        (
            "iris",
            {"method": "kernel_shap", "params": {"samples": 10}},
            "",
            "invalid_input",
            "params.samples: Extra inputs are not permitted",
        ),
        ("iris", {"method": "lime", "params": [1]}, "", "invalid_input", "params: expected"),
        ("diabetes", {"method": "anchors"}, "", "not_explainable", "does not offer anchors"),
        ("iris", {"method": "linear_shap"}, "", "not_explainable", "no linear_shap"),
        ("iris", {"method": "lime"}, "?class=daisy", "invalid_input", "'daisy' is not one of"),
        (
            "iris",
            {"method": "lime", "params": {"class": "daisy"}},
            "",
            "invalid_input",
            "'daisy' is not one of",
        ),
        ("iris", {"method": "lime"}, "?wait=-1", "invalid_input", "wait"),
    ],
)
def test_callers_mistakes_are_422(
    srv: Server, model: str, request_body: dict[str, Any], query: str, code: str, message: str
) -> None:
    frame = rows(model, [0])
    with srv.client() as c:
        r = c.post(
            f"/v1/models/{model}/explain{query}",
            json={"instances": frame.values.tolist(), **request_body},
        )
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code and message in r.json()["error"]


def test_unknown_jobs_are_404(srv: Server) -> None:
    with srv.client() as c:
        for job_id in ("0" * 32, "nope"):
            r = c.get(f"/v1/jobs/{job_id}")
            assert r.status_code == 404 and r.json()["code"] == "job_not_found"


def test_a_failing_job_reports_its_error_and_the_server_serves_on(srv: Server) -> None:
    # The artifact changes under the served version: the worker refuses to load it
    # (its digest no longer matches the manifest) and the job fails with that reason.
    artifact = srv.models_dir / "breast-cancer" / "1" / "model.skops"
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    request = {
        "instances": rows("breast-cancer", [0]).values.tolist(),
        "method": "kernel_shap",
        "params": FAST_SHAP,
    }
    with srv.client() as c:
        r = c.post("/v1/models/breast-cancer/explain", json=request)
        assert r.status_code == 202, r.text
        done = poll(c, r.json()["status_url"])
        assert done["status"] == "failed" and "result" not in done
        assert "sha256 mismatch" in done["error"]
        waited = c.post("/v1/models/breast-cancer/explain?wait=30", json=request)
        assert waited.status_code == 500 and "sha256 mismatch" in waited.json()["error"]
        assert (
            c.post(
                "/v1/models/breast-cancer/predict", json={"instances": request["instances"]}
            ).status_code
            == 200
        )
        ok = c.post(
            "/v1/models/iris/explain?wait=60",
            json={
                "instances": rows("iris", [1]).values.tolist(),
                "method": "kernel_shap",
                "params": FAST_SHAP,
            },
        )
        assert ok.status_code == 200, ok.text


def test_redis_down_fails_explain_with_503_while_predictions_go_on(tmp_path: Path) -> None:
    models = copy_demo_models(tmp_path / "models")
    env = {
        "XSERVE_BROKER_URL": f"redis://127.0.0.1:{closed_port()}/0",
        "XSERVE_CACHE_URL": str(tmp_path / "cache"),
    }
    frame = rows("credit-risk", [0])
    with running_server(models, env=env) as server, server.client() as c:
        started = time.monotonic()
        r = c.post(
            "/v1/models/credit-risk/explain",
            json={"instances": frame.values.tolist(), "method": "kernel_shap"},
        )
        assert r.status_code == 503, r.text
        assert time.monotonic() - started < 10
        assert r.json()["code"] == "job_queue_unavailable" and r.headers["retry-after"]
        assert "cannot reach Redis" in r.json()["error"]
        assert c.get(f"/v1/jobs/{'a' * 32}").status_code == 503
        predicted = c.post(
            "/v1/models/credit-risk/predict", json={"instances": frame.values.tolist()}
        )
        assert predicted.status_code == 200 and len(predicted.json()["predictions"]) == 1
        inline = c.post(
            "/v1/models/credit-risk/explain",
            json={"instances": frame.values.tolist(), "method": "tree_shap"},
        )
        assert inline.status_code == 200


def precompute(
    env: dict[str, str], data: Path, method: str, params: str
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "xserve.cli",
        "precompute",
        "diabetes",
        "--data",
        str(data),
        "--method",
        method,
        "--params",
        params,
        "--chunk",
        "2",
    ]
    return subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=180, check=False
    )


def test_precompute_fills_the_cache_and_a_rerun_skips_finished_rows(
    srv: Server, tmp_path: Path
) -> None:
    frame = rows("diabetes", list(range(20, 26)))
    env = {
        "XSERVE_MODELS_DIR": str(srv.models_dir),
        "XSERVE_CACHE_URL": str(srv.models_dir.parent / "cache"),
    }
    params = '{"num_samples": 200}'
    frame.iloc[:3].to_csv(tmp_path / "half.csv", index=False)
    frame.to_csv(tmp_path / "all.csv", index=False)
    half = precompute(env, tmp_path / "half.csv", "lime", params)
    assert half.returncode == 0, half.stderr
    assert "3 rows: 0 already cached, 3 computed, 0 failed" in half.stderr
    assert "100%" in half.stderr  # the progress bar
    full = precompute(env, tmp_path / "all.csv", "lime", params)
    assert full.returncode == 0, full.stderr
    assert "6 rows: 3 already cached, 3 computed, 0 failed" in full.stderr
    rerun = precompute(env, tmp_path / "all.csv", "lime", params)
    assert "6 rows: 6 already cached, 0 computed, 0 failed" in rerun.stderr
    with srv.client() as c:
        r = c.post(
            "/v1/models/diabetes/explain",
            json={
                "instances": frame.to_dict(orient="records"),
                "method": "lime",
                "params": {"num_samples": 200},
            },
        )
    assert r.status_code == 200 and r.json()["cached"] == [True] * 6
    bad = precompute(env, tmp_path / "all.csv", "lime", '{"num_samples": 1}')
    assert bad.returncode != 0 and "params.num_samples" in bad.stderr


def test_celery_worker_serves_explain_and_precompute(tmp_path: Path) -> None:
    flushed_redis(HTTP_DB)
    models = copy_demo_models(tmp_path / "models")
    env = worker_env(models, str(tmp_path / "cache"), HTTP_DB, f"test-http-{os.getpid()}")
    frame = rows("iris", [5, 55])
    request = {"instances": frame.values.tolist(), "method": "kernel_shap", "params": FAST_SHAP}
    with running_worker(env, tmp_path / "worker.log"), running_server(models, env=env) as server:
        with server.client() as c:
            r = c.post("/v1/models/iris/explain?wait=60", json=request)
            assert r.status_code == 200, r.text
            assert r.json()["cached"] == [False, False]
            # The Celery worker recorded the decision in the server's log, once.
            audit = c.get("/v1/audit/records", params={"request_id": r.json()["request_id"]})
            (record,) = audit.json()["records"]
            assert record["kind"] == "explain" and record["model"] == "iris"
            again = c.post("/v1/models/iris/explain", json=request)
            assert again.status_code == 200 and again.json()["cached"] == [True, True]
            assert c.get("/v1/cache/stats").json()["job_queue"] == "celery"
        data = tmp_path / "rows.csv"
        rows("diabetes", [1, 2, 3]).to_csv(data, index=False)
        done = precompute(env, data, "kernel_shap", '{"nsamples": 80, "background": 8}')
        assert done.returncode == 0, done.stderr
        assert "3 rows: 0 already cached, 3 computed, 0 failed" in done.stderr
        with server.client() as c:
            cached = c.post(
                "/v1/models/diabetes/explain",
                json={
                    "instances": rows("diabetes", [1, 2, 3]).values.tolist(),
                    "method": "kernel_shap",
                    "params": {"nsamples": 80, "background": 8},
                },
            )
        assert cached.status_code == 200 and cached.json()["cached"] == [True] * 3
    assert "xserve.explain" in (tmp_path / "worker.log").read_text()
