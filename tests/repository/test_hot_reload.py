"""Versions appear and disappear under a live server with zero failed requests."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from tests.server import Server, copy_demo_models, running_server


def _hammer(server: Server, stop: threading.Event, seen: Counter[str], failures: list[str]) -> None:
    row = pd.read_csv(server.models_dir / "credit-risk" / "1" / "background.csv").iloc[0].tolist()
    with httpx.Client(base_url=server.url, timeout=10) as c:
        while not stop.is_set():
            try:
                r = c.post("/v1/models/credit-risk/predict", json={"instances": [row]})
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                continue
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text}")
            else:
                seen[r.json()["version"]] += 1


def _wait_for(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _failed(states: list[dict[str, Any]], state: dict[str, Any]) -> bool:
    states.append(state)
    return any(v["state"] == "failed" for v in state["versions"])


def _serving(server: Server) -> dict[str, Any]:
    models = httpx.get(f"{server.url}/v1/models").json()["models"]
    return next(m for m in models if m["name"] == "credit-risk")


def test_add_and_remove_versions_under_load(tmp_path: Path) -> None:
    root = copy_demo_models(tmp_path / "models")
    model_dir = root / "credit-risk"
    with running_server(root, workers=2) as server:
        stop, seen = threading.Event(), Counter[str]()
        failures: list[str] = []
        threads = [
            threading.Thread(target=_hammer, args=(server, stop, seen, failures)) for _ in range(4)
        ]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            # A plain (non-atomic) copy: the server must not load it half-written.
            shutil.copytree(model_dir / "1", model_dir / "2")
            _wait_for(lambda: seen["2"] > 50)
            # A broken newer version is reported and leaves version 2 serving.
            shutil.copytree(model_dir / "1", model_dir / "3")
            (model_dir / "3" / "model.json").write_text("{ not a model")
            # Two workers scan on their own: judge each answer by itself.
            states: list[dict[str, Any]] = []
            _wait_for(lambda: _failed(states, _serving(server)))
            state = states[-1]
            broken = next(v for v in state["versions"] if v["version"] == "3")
            assert "sha256 mismatch" in broken["error"]
            assert state["serving_version"] == "2"
            shutil.rmtree(model_dir / "3")
            shutil.rmtree(model_dir / "2")
            before = seen["1"]
            _wait_for(lambda: seen["1"] > before + 50)
            _wait_for(lambda: [v["version"] for v in _serving(server)["versions"]] == ["1"])
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert failures == []
    assert seen["2"] > 50 and seen["1"] > 100
    assert "3" not in seen
