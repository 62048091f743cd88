"""Tracing in one process, with the SDK's in-memory exporter: off by default (one shared
null context, nothing injected, no middleware), the W3C ``traceparent`` of an HTTP request
continued by its request and model-call spans, and a job's spans (run, explainer, audit
commit) continuing the trace context its spec carries."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from litestar.testing import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.server import copy_demo_models
from xserve import tracing
from xserve.api.app import create_app
from xserve.jobs.base import JobSpec, encode_rows, new_job_id
from xserve.jobs.run import WorkerContext, run_job
from xserve.repository.version import load_version
from xserve.settings import Settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
ROW = [5.1, 3.5, 1.4, 0.2]  # iris's first background row


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """This process traced into memory; the module's state restored afterwards."""
    monkeypatch.setattr(tracing, "_tracer", tracing._tracer)
    exporter = InMemorySpanExporter()
    tracing.enable(exporter)
    yield exporter


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return copy_demo_models(tmp_path / "models", ["iris"])


def named(finished: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = [s for s in finished if s.name == name]
    assert len(found) == 1, [s.name for s in finished]
    return found[0]


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"},
    ],
)
def test_off_unless_an_exporter_is_named(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "XSERVE_OTEL_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(tracing, "_tracer", tracing._UNSET)  # decided afresh
    first, second = tracing.span("a"), tracing.span("b", {"k": 1}, parent={"traceparent": "x"})
    assert first is second  # one shared null context: nothing built per call
    with first as current:
        assert current is None
    assert tracing.inject() is None
    assert tracing.asgi_middleware() == []
    assert not tracing.enabled()


def test_on_with_an_exporter_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.setattr(tracing, "_tracer", tracing._UNSET)
    assert tracing.enabled()
    with tracing.span("outer"):
        carrier = tracing.inject()
    assert carrier is not None and carrier["traceparent"].startswith("00-")


def test_an_http_request_continues_the_callers_trace(
    spans: InMemorySpanExporter, models: Path, tmp_path: Path
) -> None:
    settings = Settings(
        models_dir=models,
        audit_url=f"sqlite:///{tmp_path / 'audit.db'}",
        cache_url=str(tmp_path / "cache"),
    )
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/v1/models/iris/predict",
            json={"instances": [ROW]},
            headers={"traceparent": TRACEPARENT},
        )
        assert r.status_code == 200, r.text
    finished = spans.get_finished_spans()
    request = named(finished, "POST /v1/models/{model}/predict")  # the route names no model
    assert request.kind is SpanKind.SERVER
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert request.parent is not None and format(request.parent.span_id, "016x") == PARENT_ID
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["url.path"] == "/v1/models/iris/predict"
    model_call = named(finished, "xserve.model")
    assert model_call.context.trace_id == request.context.trace_id
    assert model_call.parent is not None and model_call.parent.span_id == request.context.span_id
    assert model_call.attributes is not None and model_call.attributes["xserve.model"] == "iris"
    commit = named(finished, "xserve.audit.commit")  # in the batch's thread, in the trace
    assert commit.attributes is not None and commit.attributes["xserve.records"] == 1
    assert commit.context.trace_id == request.context.trace_id
    assert commit.parent is not None and commit.parent.span_id == model_call.context.span_id


def test_a_job_continues_the_trace_its_spec_carries(
    spans: InMemorySpanExporter, models: Path, tmp_path: Path
) -> None:
    version = load_version("iris", "1", models / "iris" / "1")
    with tracing.span("submitter") as submitter:
        carrier = tracing.inject()
    assert carrier is not None
    spec = JobSpec(
        model="iris",
        version="1",
        digest=version.digest,
        method="kernel_shap",
        params={"nsamples": 60, "background": 5},
        rows=encode_rows(np.array([ROW])),
        trace=carrier,
    )
    ctx = WorkerContext(
        models_dir=models,
        cache_url=str(tmp_path / "cache"),
        cache_max_entries=100,
        cache_max_bytes=1 << 20,
        cache_max_age=3600.0,
        threads=1,
        audit_url=f"sqlite:///{tmp_path / 'audit.db'}",
    )
    answer = run_job(spec, ctx, new_job_id())  # after the submitter's span ended, as a worker
    assert answer["explanations"][0]["method"] == "kernel_shap"
    finished = spans.get_finished_spans()
    run = named(finished, "xserve.job.run")
    assert run.kind is SpanKind.CONSUMER
    assert run.context.trace_id == submitter.get_span_context().trace_id
    assert run.parent is not None
    assert run.parent.span_id == submitter.get_span_context().span_id
    for name in ("xserve.explain", "xserve.audit.commit"):
        child = named(finished, name)
        assert child.context.trace_id == run.context.trace_id
        assert child.parent is not None and child.parent.span_id == run.context.span_id


def test_without_the_sdk_xserve_runs_untraced(tmp_path: Path) -> None:
    """The ``otel`` extra is optional: with OTEL_* asking for tracing but no
    opentelemetry installed, the app is built and tracing stays off (with a warning)."""
    program = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if not installed\n"
        "from xserve import tracing\n"
        "from xserve.api.app import create_app\n"
        "assert not tracing.enabled()\n"
        "assert tracing.span('a') is tracing.span('b') and tracing.inject() is None\n"
        "create_app()\n"
        "print('untraced')\n"
    )
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "console",
        "XSERVE_MODELS_DIR": str(tmp_path / "models"),
        "XSERVE_AUDIT_URL": "none",
    }
    done = subprocess.run(
        [sys.executable, "-c", program],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "untraced"
    assert "opentelemetry-sdk is not installed" in done.stderr
