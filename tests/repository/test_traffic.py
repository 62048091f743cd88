"""Traffic policies (deployment.yaml): parsing, sticky splits, rollback, shadow, live changes."""

from __future__ import annotations

import asyncio
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client import REGISTRY

from tests.metrics_support import scrape, value
from tests.server import Server, copy_demo_models, running_server
from xserve.errors import ManifestError
from xserve.repository.traffic import (
    Deployment,
    PolicyState,
    Route,
    load_deployment,
    next_state,
    resolve,
    save_deployment,
    subject_point,
)
from xserve.repository.version import ModelVersion
from xserve.serving.prediction import Prediction
from xserve.serving.request import DecisionRequest
from xserve.serving.shadow import ShadowRunner

SUBJECTS = [f"subject-{i}" for i in range(20_000)]
PREDICT = "/v1/models/credit-risk/predict"


def _versions(*names: str) -> dict[str, ModelVersion]:
    """Stand-ins for loaded versions: routing only reads ``version``."""
    return {n: cast(ModelVersion, SimpleNamespace(version=n, name="m")) for n in names}


def _route(deployment: Deployment, *ready: str, name: str = "m") -> Route:
    route, why = resolve(name, deployment, _versions(*ready))
    assert route is not None, why
    return route


def _split(**weights: float) -> Deployment:
    return Deployment(policy="split", split={k.lstrip("v"): w for k, w in weights.items()})


# -- parsing ---------------------------------------------------------------------------


def test_deployment_parses_versions_given_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "deployment.yaml"
    path.write_text("policy: split\nsplit: {2: 90, 3: 10}\npinned: 2\nshadow: 4\n")
    d = load_deployment(path)
    assert d.split == {"2": 90.0, "3": 10.0}
    assert (d.pinned, d.shadow) == ("2", "4")
    path.write_text("")
    assert load_deployment(path).policy == "latest"


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ("policy: canary\n", "policy", "'latest', 'pinned' or 'split'"),
        ("policy: pinned\n", "pinned", "required with policy: pinned"),
        ("policy: split\n", "split", "required with policy: split"),
        ("policy: split\nsplit: {1: -5, 2: 10}\n", "split", "must be finite and not negative"),
        ("policy: split\nsplit: {1: 0}\n", "split", "positive weight"),
        ("policy: split\nsplit: {one: 1}\n", "split", "'one' is not a version number"),
        ("policy: pinned\npinned: v2\n", "pinned", "'v2' is not a version number"),
        ("policy: latest\ncanary: 3\n", "canary", "Extra inputs are not permitted"),
        ("- latest\n", "expected a mapping", ""),
        ("policy: [unclosed\n", "not valid YAML", ""),
    ],
)
def test_bad_deployment_errors_name_the_file_and_key(
    tmp_path: Path, text: str, key: str, why: str
) -> None:
    path = tmp_path / "deployment.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as err:
        load_deployment(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert key in message and why in message


def test_save_deployment_round_trips(tmp_path: Path) -> None:
    d = Deployment(policy="split", split={"1": 90, "2": 10}, shadow="3")
    assert load_deployment(save_deployment(tmp_path, d)) == d
    assert [p.name for p in tmp_path.iterdir()] == ["deployment.yaml"]  # no temp file left


# -- routing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights", [{"1": 90, "2": 10}, {"1": 50, "2": 30, "3": 20}, {"4": 1, "7": 3}]
)
def test_split_proportions_over_many_subjects(weights: dict[str, float]) -> None:
    route = _route(Deployment(policy="split", split=weights), *weights)
    counts = Counter(route.choose(s).version for s in SUBJECTS)
    total = sum(weights.values())
    for version, w in weights.items():
        # Binomial standard deviation at n=20,000 is at most 0.0036: allow about 3.
        assert abs(counts[version] / len(SUBJECTS) - w / total) < 0.011, (version, counts)


def test_split_is_sticky_per_subject_across_resolutions_and_processes() -> None:
    first = _route(_split(v1=90, v2=10), "1", "2")
    again = _route(_split(v1=90, v2=10), "1", "2", "3")  # a rescan with another version loaded
    for s in SUBJECTS[:2000]:
        chosen = first.choose(s).version
        assert first.choose(s).version == chosen == again.choose(s).version
    # The point comes from a fixed hash (not Python's salted hash()): the same in every process.
    assert subject_point("m", "subject-0") == pytest.approx(subject_point("m", "subject-0"))
    assert 0 <= subject_point("m", "") < 1


def test_changing_weights_moves_only_the_expected_share_of_subjects() -> None:
    before = _route(_split(v1=90, v2=10), "1", "2")
    after = _route(_split(v1=80, v2=20), "1", "2")
    moves = Counter(
        (before.choose(s).version, after.choose(s).version)
        for s in SUBJECTS
        if before.choose(s).version != after.choose(s).version
    )
    assert set(moves) == {("1", "2")}  # nobody comes back from the canary
    assert abs(moves["1", "2"] / len(SUBJECTS) - 0.10) < 0.011


def test_models_split_their_subjects_independently() -> None:
    a = _route(_split(v1=50, v2=50), "1", "2", name="a")
    b = _route(_split(v1=50, v2=50), "1", "2", name="b")
    both = sum(a.choose(s).version == "2" and b.choose(s).version == "2" for s in SUBJECTS)
    assert abs(both / len(SUBJECTS) - 0.25) < 0.015


def test_requests_without_a_subject_draw_at_random() -> None:
    random.seed(7)
    route = _route(_split(v1=70, v2=30), "1", "2")
    counts = Counter(route.choose(None).version for _ in range(20_000))
    assert abs(counts["2"] / 20_000 - 0.30) < 0.015


def test_latest_pinned_and_zero_weights() -> None:
    assert _route(Deployment(), "1", "2", "10").choose("x").version == "10"  # numeric order
    pinned = _route(Deployment(policy="pinned", pinned="2"), "1", "2", "3")
    assert {pinned.choose(s).version for s in SUBJECTS[:500]} == {"2"}
    no_canary = _route(_split(v1=100, v2=0), "1")  # a zero weight needs no ready version
    assert no_canary.versions[0].version == "1" and no_canary.shares() == {"1": 1.0}
    assert _route(_split(v1=30, v2=70), "1", "2").primary.version == "2"


# -- policy state across scans ----------------------------------------------------------


def _scan(tmp_path: Path, state: PolicyState, text: str | None, *ready: str) -> PolicyState:
    path = tmp_path / "deployment.yaml"
    if text is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(text)
    return next_state("m", tmp_path, _versions(*ready), state)


def _serves(state: PolicyState) -> set[str]:
    assert state.route is not None
    return {m.version for m in state.route.versions}


def test_a_policy_that_cannot_apply_leaves_the_previous_one_serving(tmp_path: Path) -> None:
    s = _scan(tmp_path, PolicyState(), None, "1", "2")
    assert _serves(s) == {"2"} and s.error is None
    s = _scan(tmp_path, s, "policy: pinned\npinned: 1\n", "1", "2")
    assert _serves(s) == {"1"} and s.describe()["policy"] == "pinned"
    # Version 3 is still loading (or failed): pinned 1 keeps serving, and the reason shows.
    s = _scan(tmp_path, s, "policy: split\nsplit: {1: 50, 3: 50}\n", "1", "2")
    assert _serves(s) == {"1"}
    shown = s.describe()
    assert shown["requested"] == {"policy": "split", "split": {"1": 50.0, "3": 50.0}}
    assert "version 3 is not ready" in shown["error"]
    s = _scan(tmp_path, s, "policy: split\nsplit: {1: 50, 3: 50}\n", "1", "2", "3")
    assert _serves(s) == {"1", "3"} and "error" not in s.describe()
    # A file that stops parsing: reported, and the last good policy keeps serving.
    s = _scan(tmp_path, s, "policy: split\nsplit: {1: fifty}\n", "1", "2", "3")
    assert _serves(s) == {"1", "3"}
    assert "deployment.yaml: split: 1: weight 'fifty' is not a number" in s.describe()["error"]
    # Removing the file is the default again.
    s = _scan(tmp_path, s, None, "1", "2", "3")
    assert _serves(s) == {"3"} and s.describe() == {"policy": "latest", "routes": {"3": 1.0}}


def test_a_removed_pinned_version_falls_back_to_latest(tmp_path: Path) -> None:
    s = _scan(tmp_path, PolicyState(), "policy: pinned\npinned: 1\n", "1", "2")
    s = _scan(tmp_path, s, "policy: pinned\npinned: 1\n", "2")
    assert _serves(s) == {"2"}
    assert "version 1 is not ready" in s.describe()["error"]


def test_a_shadow_that_is_not_ready_does_not_hold_back_the_live_policy(tmp_path: Path) -> None:
    s = _scan(tmp_path, PolicyState(), "policy: pinned\npinned: 1\nshadow: 3\n", "1", "2")
    assert _serves(s) == {"1"} and s.route is not None and s.route.shadow is None
    assert "shadow version 3 is not ready" in s.describe()["shadow_error"]
    s = _scan(tmp_path, s, "policy: pinned\npinned: 1\nshadow: 3\n", "1", "2", "3")
    assert s.route is not None and s.route.shadow is not None
    assert s.route.shadow.version == "3"


# -- over HTTP -------------------------------------------------------------------------


@pytest.fixture
def three_versions(tmp_path: Path) -> Path:
    """credit-risk versions 1, 2 and 3 (the same model: versions tell answers apart)."""
    root = copy_demo_models(tmp_path / "models")
    for v in ("2", "3"):
        shutil.copytree(root / "credit-risk" / "1", root / "credit-risk" / v)
    return root


def _row(root: Path) -> list[float]:
    return cast(
        list[float], pd.read_csv(root / "credit-risk" / "1" / "background.csv").iloc[0].tolist()
    )


def _apply(server: Server, text: str) -> None:
    """Write deployment.yaml and wait until the server shows it in force."""
    path = server.models_dir / "credit-risk" / "deployment.yaml"
    path.write_text(text)
    wanted = load_deployment(path).describe().items()
    _wait_for(lambda: wanted <= _traffic(server).items())


def _traffic(server: Server) -> dict[str, Any]:
    return cast(dict[str, Any], httpx.get(f"{server.url}/v1/models/credit-risk").json()["traffic"])


def _wait_for(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def server(three_versions: Path) -> Iterator[Server]:
    with running_server(three_versions) as srv:
        yield srv


def test_split_pinned_and_rollback_over_http(server: Server) -> None:
    row = _row(server.models_dir)
    body = {"instances": [row]}
    with server.client() as c:
        assert _traffic(server) == {"policy": "latest", "routes": {"3": 1.0}}
        _apply(server, 'policy: split\nsplit: {"1": 50, "2": 50}\n')
        seen = Counter()
        for s in SUBJECTS[:150]:
            expected = "1" if subject_point("credit-risk", s) < 0.5 else "2"
            for _ in range(2):  # the same subject, the same version, as computed locally
                r = c.post(PREDICT, json=body, headers={"X-Subject-Id": s})
                assert r.json()["version"] == expected, s
            seen[expected] += 1
        assert seen["1"] > 40 and seen["2"] > 40
        v2 = c.post(
            "/v2/models/credit-risk/infer",
            headers={"X-Subject-Id": SUBJECTS[0]},
            json={
                "inputs": [{"name": "input-0", "shape": [1, 8], "datatype": "FP64", "data": row}]
            },
        )
        assert (
            v2.json()["model_version"]
            == c.post(PREDICT, json=body, headers={"X-Subject-Id": SUBJECTS[0]}).json()["version"]
        )

        _apply(server, 'policy: pinned\npinned: "3"\nsplit: {"1": 50, "2": 50}\n')
        assert {c.post(PREDICT, json=body).json()["version"] for _ in range(20)} == {"3"}
        models = c.get("/v1/models").json()["models"]
        shown = next(m for m in models if m["name"] == "credit-risk")
        assert shown["traffic"] == {"policy": "pinned", "pinned": "3", "routes": {"3": 1.0}}
        assert shown["serving_version"] == "3"
        # The versioned path bypasses the policy.
        assert c.post(f"{PREDICT[:-8]}/versions/1/predict", json=body).json()["version"] == "1"

        # Rollback: a policy change, applied without a restart.
        _apply(server, 'policy: pinned\npinned: "2"\n')
        assert {c.post(PREDICT, json=body).json()["version"] for _ in range(20)} == {"2"}

        # A broken file is reported; the policy in force keeps serving.
        (server.models_dir / "credit-risk" / "deployment.yaml").write_text("policy: pinned\n")
        _wait_for(lambda: "error" in _traffic(server))
        assert "pinned: required with policy: pinned" in _traffic(server)["error"]
        assert c.post(PREDICT, json=body).json()["version"] == "2"


def test_shadow_answers_are_recorded_never_returned(server: Server) -> None:
    row = _row(server.models_dir)
    _apply(server, 'policy: pinned\npinned: "1"\nshadow: "3"\n')
    with server.client() as c:
        live: dict[str, Any] = {}
        for i in range(12):
            explain = i % 2 == 0
            r = c.post(
                f"{PREDICT}?explain={str(explain).lower()}",
                json={"instances": [row, row]},
                headers={"X-Subject-Id": f"s{i}"},
            )
            answer = r.json()
            assert r.status_code == 200 and answer["version"] == "1"
            keys = {"model", "version", "request_id", "predictions", "probabilities"}
            assert set(answer) == keys | ({"explanations"} if explain else set())
            assert "shadow" not in r.text
            live[answer["request_id"]] = (answer, explain)

        def shadow_records() -> list[dict[str, Any]]:
            page = c.get("/v1/audit/records", params={"model": "credit-risk", "limit": 1000})
            return [r for r in page.json()["records"] if r["kind"] == "shadow"]

        _wait_for(lambda: len(shadow_records()) == len(live))
        for record in shadow_records():
            answer, explain = live[record["request_id"]]  # filed under the live request's id
            assert record["version"] == "3"
            assert record["output"]["predictions"] == answer["predictions"]
            assert (record["explanations"] is not None) == explain
        kinds = Counter(
            r["kind"]
            for r in c.get(
                "/v1/audit/records", params={"model": "credit-risk", "version": "1"}
            ).json()["records"]
        )
        assert kinds == {"predict": len(live)}  # the live records are untouched
        samples = scrape(server.url)
        labels = {"model": "credit-risk", "live_version": "1", "shadow_version": "3"}
        assert value(samples, "xserve_shadow_agreement_total", agree="true", **labels) == 24
        assert value(samples, "xserve_shadow_agreement_total", agree="false", **labels) == 0
        assert value(samples, "xserve_shadow_requests_total", outcome="recorded", **labels) == 12


# -- live policy changes under load ---------------------------------------------------------


def _hammer(
    server: Server, stop: threading.Event, seen: Counter[str], failures: list[str], worker: int
) -> None:
    body = {"instances": [_row(server.models_dir)]}
    n = 0
    with httpx.Client(base_url=server.url, timeout=10) as c:
        while not stop.is_set():
            n += 1
            try:
                r = c.post(PREDICT, json=body, headers={"X-Subject-Id": f"w{worker}-{n % 50}"})
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                continue
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text}")
            else:
                seen[r.json()["version"]] += 1


def test_live_policy_changes_under_load_fail_no_request(three_versions: Path) -> None:
    model_dir = three_versions / "credit-risk"
    policies = [
        'policy: pinned\npinned: "1"\n',
        'policy: split\nsplit: {"1": 90, "2": 10}\nshadow: "3"\n',
        'policy: split\nsplit: {"2": 50, "3": 50}\n',
        "policy: pinned\npinned: [broken\n",  # does not parse: the split keeps serving
        'policy: pinned\npinned: "1"\n',  # rollback
        'policy: pinned\npinned: "9"\n',  # no such version: pinned 1 keeps serving
        "policy: latest\n",
    ]
    with running_server(three_versions, workers=2) as server:
        stop, seen, failures = threading.Event(), Counter[str](), []
        threads = [
            threading.Thread(target=_hammer, args=(server, stop, seen, failures, i))
            for i in range(4)
        ]
        for t in threads:
            t.start()
        try:
            for text in policies:
                before = sum(seen.values())
                (model_dir / "deployment.yaml").write_text(text)  # in place, not atomic
                time.sleep(0.6)  # three scans of each worker
                _wait_for(lambda before=before: sum(seen.values()) > before + 20)
            latest_from = seen["3"]
            _wait_for(lambda: seen["3"] > latest_from + 50)
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert failures == []
    assert seen["1"] > 50 and seen["2"] > 20 and seen["3"] > 50


# -- the shadow runner on its own ----------------------------------------------------------


class _FakePlane:
    """What ShadowRunner uses of the data plane: its scoring path, recording each copy."""

    def __init__(self, score: Callable[[Any], Any]) -> None:
        self._score = score
        self.records: list[tuple[str, str, Any]] = []

    async def decide(
        self, model: Any, x: Any, request: DecisionRequest, request_id: str
    ) -> SimpleNamespace:
        prediction = await self._score(model)
        self.records.append((request.kind, request_id, model.version))
        return SimpleNamespace(prediction=prediction)


def _shadow_count(outcome: str) -> float:
    labels = {"model": "m", "live_version": "1", "shadow_version": "3", "outcome": outcome}
    return REGISTRY.get_sample_value("xserve_shadow_requests_total", labels) or 0.0


def test_shadow_runner_drops_beyond_its_bound_and_survives_failures() -> None:
    live = SimpleNamespace(name="m", version="1", task="classification", classes=[0, 1])
    shadow = SimpleNamespace(
        name="m", version="3", task="classification", classes=[0, 1], inline=None
    )
    release = asyncio.Event()
    request = DecisionRequest("predict", "m")

    async def slow(model: Any) -> Prediction:
        await release.wait()
        return Prediction(model, np.array([[0.2, 0.8], [0.9, 0.1]]))

    async def broken(model: Any) -> Prediction:
        raise RuntimeError("shadow model exploded")

    async def scenario() -> tuple[_FakePlane, _FakePlane]:
        plane = _FakePlane(slow)
        runner = ShadowRunner(plane.decide, lambda name: shadow, max_pending=2)
        for i in range(5):  # returns at once: the caller never waits for the copy
            runner.offer(cast(Any, live), np.zeros((2, 8)), request, [1, 1], f"r{i}")
        assert runner.pending == 2
        release.set()
        await runner.drain()
        failing = _FakePlane(broken)
        runner = ShadowRunner(failing.decide, lambda name: shadow)
        runner.offer(cast(Any, live), np.zeros((2, 8)), request, [1, 1], "r9")
        await runner.drain()
        return plane, failing

    dropped, failed, recorded = (_shadow_count(o) for o in ("dropped", "failed", "recorded"))
    plane, failing = asyncio.run(scenario())
    assert plane.records == [("shadow", "r0", "3"), ("shadow", "r1", "3")]
    assert failing.records == []
    assert _shadow_count("dropped") - dropped == 3
    assert _shadow_count("failed") - failed == 1
    assert _shadow_count("recorded") - recorded == 2
    agree = {"model": "m", "live_version": "1", "shadow_version": "3"}
    # Live said [1, 1], the shadow [1, 0]: per instance, one agreement and one not, twice.
    assert (
        REGISTRY.get_sample_value("xserve_shadow_agreement_total", {**agree, "agree": "false"}) == 2
    )
