"""``GET /metrics``: parsed with Prometheus's text parser, added up over server processes."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.jobs_support import REDIS_HOST, REDIS_PORT, closed_port, redis_url
from tests.metrics_support import Samples, matching, scrape, value
from tests.server import Server, copy_demo_models, running_server
from xserve.api.metrics import endpoint_of
from xserve.jobs.celery_queue import CeleryQueue
from xserve.monitoring.metrics import NO_MODEL, render, watch_job_queue
from xserve.monitoring.procdir import VARIABLE, metrics_dir
from xserve.security.keys import add_key
from xserve.settings import Settings

PREDICT = "/v1/models/credit-risk/predict"
OK = {"model": "credit-risk", "version": "1", "endpoint": "predict", "status": "200"}
BAD = {**OK, "status": "422"}
METRICS_DB = 11  # a Redis database no other test module uses (see tests/jobs_support.py)


def test_endpoint_labels_come_from_route_templates() -> None:
    assert endpoint_of("/v1/models/{model:str}/predict") == "predict"
    assert endpoint_of("/v1/models/{model:str}/versions/{version:str}/predict") == "predict"
    assert endpoint_of("/v2/models/{model:str}/versions/{version:str}/infer") == "infer"
    assert endpoint_of("/v1/jobs/{job_id:str}") == "jobs"
    assert endpoint_of("/") == "root"


def test_serve_gets_a_fresh_metrics_folder_unless_one_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
    monkeypatch.delenv(VARIABLE.lower(), raising=False)
    with metrics_dir() as made:
        assert os.environ[VARIABLE] == str(made) and made.is_dir()
        (made / "counter_1.db").write_bytes(b"x")
    assert not made.exists() and VARIABLE not in os.environ
    given = tmp_path / "given"
    monkeypatch.setenv(VARIABLE, str(given))
    with metrics_dir() as used:
        assert used == given and given.is_dir()
    assert given.is_dir()  # the caller's folder is the caller's to empty


def test_celery_queue_length_is_read_from_redis_when_scraped() -> None:
    queue_name = "xserve-metrics-test"
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=METRICS_DB)
    client.delete(queue_name)
    client.rpush(queue_name, b"a", b"b", b"c")
    queue = CeleryQueue(Settings(broker_url=redis_url(METRICS_DB), job_queue=queue_name))
    down = CeleryQueue(Settings(broker_url=f"redis://127.0.0.1:{closed_port()}/0"))
    try:
        assert queue.broker_length() == 3 and down.broker_length() is None
        watch_job_queue(lambda: (queue_name, queue.broker_length()))
        families = {f.name: f for f in text_string_to_metric_families(render().decode())}
        (sample,) = families["xserve_job_broker_queue_length"].samples
        assert sample.labels == {"queue": queue_name} and sample.value == 3
        watch_job_queue(lambda: (queue_name, down.broker_length()))  # Redis down: no sample
        assert "xserve_job_broker_queue_length{" not in render().decode()
    finally:
        watch_job_queue(None)
        client.delete(queue_name)
        queue.close()
        down.close()


# -- against a real server with two worker processes -------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _metrics_folder(server: Server) -> Path:
    """The folder `xserve serve` made: its workers inherited it in their environment."""
    for child in _children(server.proc.pid):
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        for item in env:
            if item.startswith(VARIABLE.encode() + b"="):
                return Path(item.split(b"=", 1)[1].decode())
    raise AssertionError("no worker process carries " + VARIABLE)


def _requests_by_process(folder: Path) -> dict[int, float]:
    """xserve_requests_total{OK labels} as each process wrote it to its own file (read with
    prometheus-client's own collector, over a copy of that one file)."""
    out = {}
    for path in folder.glob("counter_*.db"):
        with tempfile.TemporaryDirectory() as one:
            shutil.copy(path, one)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=one)  # type: ignore[no-untyped-call]
            found = registry.get_sample_value("xserve_requests_total", OK)
        if found:
            out[int(path.stem.split("_")[1])] = found
    return out


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    tmp = tmp_path_factory.mktemp("metrics")
    root = copy_demo_models(tmp / "models")
    keys = tmp / "keys.txt"
    key = add_key(keys, "tester", "admin")
    env = {
        "XSERVE_API_KEYS": str(keys),
        "XSERVE_CACHE_URL": str(tmp / "cache"),
        "XSERVE_JOB_WORKERS": "1",
    }
    with running_server(root, workers=2, env=env) as server:
        folder = _metrics_folder(server)
        yield server, key
    assert not folder.exists()  # `xserve serve` made it, and removed it on the way out


def _post(server: Server, key: str, path: str, body: object) -> httpx.Response:
    # A fresh connection each time: the kernel hands connections to either worker.
    return httpx.post(
        f"{server.url}{path}", json=body, timeout=30, headers={"Authorization": f"Bearer {key}"}
    )


def _buckets(samples: Samples, **labels: str) -> list[tuple[float, float]]:
    found = matching(samples, "xserve_request_duration_seconds_bucket", **labels)
    return sorted((float(dict(k)["le"]), v) for k, v in found.items())


def test_request_counts_and_latency_add_up_over_both_workers(metered: tuple[Server, str]) -> None:
    server, key = metered
    row = pd.read_csv(server.models_dir / "credit-risk" / "1" / "background.csv").iloc[0].tolist()
    folder = _metrics_folder(server)
    before = scrape(server.url)  # no API key needed
    sent = bad = 0
    with ThreadPoolExecutor(8) as pool:
        # Until both processes have answered some (the kernel decides who accepts).
        while len(_requests_by_process(folder)) < 2 or sent < 120:
            results = list(
                pool.map(lambda _: _post(server, key, PREDICT, {"instances": [row]}), range(40))
            )
            assert all(r.status_code == 200 for r in results)
            sent += len(results)
            assert sent < 2000, "one worker took every connection"
        for _ in range(7):
            assert _post(server, key, PREDICT, {"instances": [["x"] * 8]}).status_code == 422
            bad += 1
    unauthenticated = httpx.post(f"{server.url}{PREDICT}", json={"instances": [row]})
    assert unauthenticated.status_code == 401

    per_process = _requests_by_process(folder)
    assert len(per_process) >= 2 and all(v > 0 for v in per_process.values())
    for _ in range(4):  # whichever worker answers the scrape reports the sum
        after = scrape(server.url)
        total = value(after, "xserve_requests_total", **OK)
        assert total - value(before, "xserve_requests_total", **OK) == sent
        assert total == sum(per_process.values())
        assert (
            value(after, "xserve_requests_total", **BAD)
            - value(before, "xserve_requests_total", **BAD)
            == bad
        )
        # Rejected before any model was chosen: no model or version, said so.
        assert (
            value(
                after,
                "xserve_requests_total",
                model=NO_MODEL,
                version=NO_MODEL,
                endpoint="predict",
                status="401",
            )
            >= 1
        )

    count = value(after, "xserve_request_duration_seconds_count", **OK)
    assert count - value(before, "xserve_request_duration_seconds_count", **OK) == sent
    buckets = _buckets(after, **OK)
    assert buckets[-1] == (float("inf"), count)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
    assert 0 < value(after, "xserve_request_duration_seconds_sum", **OK) < count * 5


def test_explanations_cache_jobs_and_drift(metered: tuple[Server, str]) -> None:
    server, key = metered
    row = pd.read_csv(server.models_dir / "diabetes" / "1" / "background.csv").iloc[3].tolist()
    credit = pd.read_csv(server.models_dir / "credit-risk" / "1" / "background.csv")
    before = scrape(server.url)
    for i in range(5):  # one row each: 5 instances explained inline
        r = _post(server, key, f"{PREDICT}?explain=true", {"instances": [credit.iloc[i].tolist()]})
        assert r.status_code == 200
    job = {"instances": [row], "method": "kernel_shap", "params": {"nsamples": 64}}
    first = _post(server, key, "/v1/models/diabetes/explain?wait=60", job)
    assert first.status_code == 200 and first.json()["cached"] == [False]
    again = _post(server, key, "/v1/models/diabetes/explain", job)
    assert again.status_code == 200 and again.json()["cached"] == [True]

    after = scrape(server.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("xserve_explained_instances_total", method="tree_shap") == 5
    assert 1 <= delta("xserve_explanation_duration_seconds_count", method="tree_shap") <= 5
    # Written by the job's worker process, added up by the server.
    assert delta("xserve_explained_instances_total", method="kernel_shap") == 1
    assert delta("xserve_explanation_duration_seconds_count", method="kernel_shap") == 1
    # The server's lookup missed, the job's missed, the second request's hit.
    assert delta("xserve_cache_misses_total", backend="disk") == 2
    assert delta("xserve_cache_hits_total", backend="disk") == 1
    depth = ("xserve_job_queue_depth", frozenset({("backend", "in-process")}))
    assert after[depth] == 0  # it went up to 1 and back, in the process that took the job
    assert (
        delta(
            "xserve_requests_total", model="diabetes", version="1", endpoint="explain", status="200"
        )
        == 2
    )
    # Drift of the answering worker's recent traffic, one gauge per feature.
    psi = matching(after, "xserve_drift_psi", model="credit-risk", version="1")
    assert {dict(k)["feature"] for k in psi} == set(credit.columns)
    assert all(v >= 0 for v in psi.values())


def _promtool(body: bytes) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    return subprocess.run(
        [promtool, "check", "metrics"],
        input=body.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_no_empty_labels_and_the_answering_process_own_metrics(
    metered: tuple[Server, str],
) -> None:
    server, key = metered
    listed = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert listed.status_code == 200
    samples = scrape(server.url)
    empty = [k for k in samples if any(v == "" for _, v in k[1])]
    assert empty == []
    assert (
        value(
            samples,
            "xserve_requests_total",
            model=NO_MODEL,
            version=NO_MODEL,
            endpoint="models",
            status="200",
        )
        >= 1
    )
    # Multiprocess mode (two workers): the standard collectors, of the answering process.
    assert value(samples, "process_resident_memory_bytes") > 10_000_000
    assert value(samples, "process_open_fds") > 0
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "python_gc_collections_total", generation="0") > 0
    assert len(matching(samples, "python_info")) == 1
    started = value(samples, "process_start_time_seconds")
    workers = _children(server.proc.pid)
    assert len(workers) >= 2
    ticks = os.sysconf("SC_CLK_TCK")
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime")
    )
    starts = {
        boot + int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        for pid in workers
    }
    assert any(abs(started - t) < 0.05 for t in starts), (started, starts)

    checked = _promtool(httpx.get(f"{server.url}/metrics", timeout=30).content)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text; version=1.0.0",
        # what Prometheus 3 sends
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
        "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;"
        "escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    ],
)
def test_openmetrics_when_asked_for(metered: tuple[Server, str], accept: str) -> None:
    server, _ = metered
    r = httpx.get(f"{server.url}/metrics", headers={"Accept": accept}, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert r.text.endswith("# EOF\n") and r.text.count("# EOF") == 1
    # strict: raises if the text is not valid OpenMetrics
    families = {f.name: f for f in openmetrics_families(r.text)}  # type: ignore[no-untyped-call]
    requests = families["xserve_requests"]
    assert requests.type == "counter"
    assert {s.name for s in requests.samples} == {"xserve_requests_total"}
    assert families["xserve_request_duration_seconds"].type == "histogram"
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    # The same counts as the classic format's.
    classic = scrape(server.url)
    for s in requests.samples:
        assert value(classic, s.name, **s.labels) >= s.value


def _mapped_folder(pid: int) -> Path | None:
    """The folder of the metrics files a process has mapped, if any."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1]
        if Path(path).name.startswith("counter_") and path.endswith(".db"):
            return Path(path).parent
    return None


def test_single_worker_serve_makes_and_removes_its_metrics_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
    root = copy_demo_models(tmp_path / "models")
    with running_server(root) as server:
        assert httpx.get(f"{server.url}/v1/models").status_code == 200
        samples = scrape(server.url)  # one worker: it runs in the serve process itself
        assert (
            value(
                samples,
                "xserve_requests_total",
                model=NO_MODEL,
                version=NO_MODEL,
                endpoint="models",
                status="200",
            )
            == 1
        )
        folder = _mapped_folder(server.proc.pid)
        assert folder is not None and folder.name.startswith("xserve-metrics-")
        assert (folder / f"counter_{server.proc.pid}.db").is_file()
    assert not folder.exists()
