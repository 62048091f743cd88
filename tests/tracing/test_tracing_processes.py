"""One request's spans share one trace across real processes: an ``xserve serve`` server
and an ``xserve worker`` (Celery on the real Redis), both tracing into one JSON-lines file
(``XSERVE_OTEL_FILE``). The caller's W3C ``traceparent`` comes in over HTTP (httpx) and
over gRPC (``tritonclient.grpc``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from tests.jobs_support import flushed_redis, running_worker, worker_env
from tests.server import Server, copy_demo_models, free_port, running_server
from tests.tracing.spans import ROW, one, spans_of, traceparent

TRACING_DB = 3  # a Redis database no other test module uses (see tests/jobs_support.py)


@dataclass
class Deployment:
    server: Server
    grpc_port: int
    spans_file: Path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("tracing")
    models = copy_demo_models(root / "models", ["iris"])
    flushed_redis(TRACING_DB)
    spans_file = root / "spans.jsonl"
    grpc_port = free_port()
    env = {
        **worker_env(models, str(root / "cache"), TRACING_DB, f"test-tracing-{os.getpid()}"),
        "OTEL_TRACES_EXPORTER": "none",  # the file alone
        "XSERVE_OTEL_FILE": str(spans_file),
        "XSERVE_GRPC_PORT": str(grpc_port),
    }
    with running_worker(env, root / "worker.log"), running_server(models, env=env) as server:
        yield Deployment(server, grpc_port, spans_file)


def test_an_explain_job_is_one_trace_across_server_and_worker(deployment: Deployment) -> None:
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4737"
    with deployment.server.client(timeout=90) as c:
        r = c.post(
            "/v1/models/iris/explain?wait=60",
            json={"instances": [ROW], "method": "kernel_shap", "params": {"nsamples": 60}},
            headers={"traceparent": traceparent(trace_id)},
        )
    assert r.status_code == 200, r.text
    assert r.json()["explanations"][0]["method"] == "kernel_shap"
    names = {
        "POST /v1/models/{model}/explain",
        "xserve.job.submit",
        "xserve.job.run",
        "xserve.explain",
        "xserve.audit.commit",
    }
    spans = spans_of(deployment.spans_file, trace_id, names)
    assert names <= {s["name"] for s in spans}
    request, submit = one(spans, "POST /v1/models/{model}/explain"), one(spans, "xserve.job.submit")
    run, explain = one(spans, "xserve.job.run"), one(spans, "xserve.explain")
    commit = one(spans, "xserve.audit.commit")  # the worker's: it records the job's answer
    assert request["parent_id"] == "0x00f067aa0ba902b7"
    assert request["kind"] == "SpanKind.SERVER"
    assert request["attributes"]["http.response.status_code"] == 200
    assert submit["parent_id"] == request["context"]["span_id"]
    assert run["parent_id"] == submit["context"]["span_id"]  # across Redis and Celery
    assert run["kind"] == "SpanKind.CONSUMER"
    assert explain["parent_id"] == run["context"]["span_id"]
    assert explain["attributes"]["xserve.method"] == "kernel_shap"
    assert commit["parent_id"] == run["context"]["span_id"]


def test_a_grpc_call_continues_the_callers_trace(deployment: Deployment) -> None:
    trace_id = "6bf92f3577b34da6a3ce929d0e0e4738"
    client = triton.InferenceServerClient(url=f"127.0.0.1:{deployment.grpc_port}")
    try:
        x = np.array([ROW], dtype=np.float64)
        tensor = triton.InferInput("input-0", list(x.shape), "FP64")
        tensor.set_data_from_numpy(x)
        result = client.infer("iris", [tensor], headers={"traceparent": traceparent(trace_id)})
    finally:
        client.close()
    assert result.get_response().model_name == "iris" and result.get_response().outputs
    call_name = "inference.GRPCInferenceService/ModelInfer"
    spans = spans_of(deployment.spans_file, trace_id, {call_name, "xserve.model"})
    call, model_call = one(spans, call_name), one(spans, "xserve.model")
    assert call["kind"] == "SpanKind.SERVER" and call["parent_id"] == "0x00f067aa0ba902b7"
    assert model_call["parent_id"] == call["context"]["span_id"]
    assert model_call["attributes"]["xserve.model"] == "iris"
    commit = one(
        spans_of(deployment.spans_file, trace_id, {"xserve.audit.commit"}), "xserve.audit.commit"
    )
    assert commit["parent_id"] == model_call["context"]["span_id"]


def test_a_request_without_traceparent_starts_its_own_trace(deployment: Deployment) -> None:
    with deployment.server.client() as c:
        r = c.post("/v1/models/iris/predict", json={"instances": [ROW]})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while True:
        spans = [json.loads(line) for line in deployment.spans_file.read_text().splitlines()]
        roots = [
            s
            for s in spans
            if s["name"] == "POST /v1/models/{model}/predict" and s["parent_id"] is None
        ]
        if roots or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert roots, "no root span for a request without traceparent"
