"""The default job queue (a pool of worker processes beside the server) carries the trace
too: an explain job's run, explainer and audit-commit spans, written by the pool's worker
process into the shared ``XSERVE_OTEL_FILE``, continue the request's trace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import Server, copy_demo_models, running_server
from tests.tracing.spans import ROW, one, spans_of, traceparent


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("tracing-pool")
    models = copy_demo_models(root / "models", ["iris"])
    spans_file = root / "spans.jsonl"
    env = {
        "OTEL_TRACES_EXPORTER": "none",
        "XSERVE_OTEL_FILE": str(spans_file),
        "XSERVE_CACHE_URL": str(root / "cache"),
        "XSERVE_JOB_WORKERS": "1",
    }
    with running_server(models, env=env) as server:
        yield server, spans_file


def test_an_in_process_pool_job_continues_the_trace(traced: tuple[Server, Path]) -> None:
    server, spans_file = traced
    trace_id = "7bf92f3577b34da6a3ce929d0e0e4739"
    with server.client(timeout=90) as c:
        r = c.post(
            "/v1/models/iris/explain?wait=60",
            json={"instances": [ROW], "method": "lime", "params": {"num_samples": 200}},
            headers={"traceparent": traceparent(trace_id)},
        )
    assert r.status_code == 200, r.text
    names = {"xserve.job.submit", "xserve.job.run", "xserve.explain", "xserve.audit.commit"}
    spans = spans_of(spans_file, trace_id, names)
    submit, run = one(spans, "xserve.job.submit"), one(spans, "xserve.job.run")
    assert run["parent_id"] == submit["context"]["span_id"]
    assert one(spans, "xserve.explain")["attributes"]["xserve.method"] == "lime"
    assert one(spans, "xserve.audit.commit")["parent_id"] == run["context"]["span_id"]
