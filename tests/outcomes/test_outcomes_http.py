"""Outcomes over HTTP against a real server: recorded in the audit chain beside their
decisions, refused item by item, idempotent, superseded; performance per version and
versions compared, equal to scikit-learn's and scipy's figures on the same pairs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    mean_absolute_error,
    roc_auc_score,
    root_mean_squared_error,
)

from tests.report_support import parse_html
from tests.server import Server, copy_demo_models, running_server
from xserve.monitoring.compare import delong_test

CREDIT = "credit-risk"
ROWS_PER_REQUEST = 30
REQUESTS = 4
MIN_OUTCOMES = 50


@dataclass
class Decisions:
    """What the server answered, by version: (request id, instance) -> P(class 1)."""

    p1: dict[str, dict[tuple[str, int], float]] = field(default_factory=dict)
    labels: dict[tuple[str, int], int] = field(default_factory=dict)


def audit_rows_of(server: Server) -> list[dict[str, Any]]:
    """Every record body with its sequence number, read with sqlite3 alone."""
    db = server.models_dir.parent / f"audit-{server.port}" / "audit.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT seq, body FROM audit_records ORDER BY seq").fetchall()
    return [{**json.loads(body), "_seq": seq} for seq, body in rows]


def _shifted_base_score(folder: Path) -> None:
    """Version 2: the same trees from another base score, so other probabilities."""
    path = folder / "model.json"
    model = json.loads(path.read_text())
    model["learner"]["learner_model_param"]["base_score"] = "6E-1"
    path.write_text(json.dumps(model))
    manifest = yaml.safe_load((folder / "xserve.yaml").read_text())
    manifest["sha256"]["model.json"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["validation"] = {"accuracy": 0.1}  # its baseline: no evaluation.json
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = copy_demo_models(tmp_path_factory.mktemp("outcomes") / "models", [CREDIT, "diabetes"])
    shutil.copytree(root / CREDIT / "1", root / CREDIT / "2")
    _shifted_base_score(root / CREDIT / "2")
    # Version 1's deploy-time evaluation promised more than it delivers: concept drift.
    baseline = {"metrics": {"auc": 0.99, "brier": 0.01}}
    (root / CREDIT / "1" / "evaluation.json").write_text(json.dumps(baseline))
    env = {"XSERVE_MIN_OUTCOMES": str(MIN_OUTCOMES), "XSERVE_PERFORMANCE_INTERVAL": "1"}
    with running_server(root, env=env) as s:
        yield s


@pytest.fixture(scope="module")
def decided(server: Server) -> Decisions:
    background = pd.read_csv(server.models_dir / CREDIT / "1" / "background.csv")
    rng = np.random.default_rng(5)
    out = Decisions()
    with server.client() as c:
        for version in ("1", "2"):
            out.p1[version] = {}
            for r in range(REQUESTS):
                rows = background.sample(ROWS_PER_REQUEST, random_state=r * 7 + int(version))
                answer = c.post(
                    f"/v1/models/{CREDIT}/versions/{version}/predict",
                    json={"instances": rows.to_dict("records")},
                ).json()
                for i, p in enumerate(answer["probabilities"]):
                    key = (answer["request_id"], i)
                    out.p1[version][key] = p[1]
                    # Outcomes drawn from version 1's probabilities for version 1's decisions,
                    # from a fair coin for version 2's: version 1 is the better model.
                    chance = p[1] if version == "1" else 0.5
                    out.labels[key] = int(rng.uniform() < chance)
    return out


def _items(decided: Decisions) -> list[dict[str, Any]]:
    return [
        {"request_id": rid, "instance": i, "outcome": label, "segments": {"group": "ab"[i % 2]}}
        for (rid, i), label in decided.labels.items()
    ]


@pytest.fixture(scope="module")
def recorded(server: Server, decided: Decisions) -> dict[str, Any]:
    with server.client() as c:
        r = c.post("/v1/outcomes", json={"outcomes": _items(decided)})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_outcomes_are_appended_to_the_chain_linked_to_their_decision(
    server: Server, decided: Decisions, recorded: dict[str, Any]
) -> None:
    assert recorded == {"accepted": len(decided.labels), "unchanged": 0, "refused": []}
    rows = audit_rows_of(server)
    outcomes = [b for b in rows if b["kind"] == "outcome"]
    decisions = {b["request_id"]: b for b in rows if b["kind"] == "predict"}
    seqs = {b["request_id"]: b["_seq"] for b in rows if b["kind"] == "predict"}
    assert len(outcomes) == len(decided.labels)
    for body in outcomes:
        key = (body["request_id"], body["instance"])
        assert body["outcome"] == decided.labels[key]
        assert body["decision_seq"] == seqs[body["request_id"]]
        assert body["version"] == decisions[body["request_id"]]["version"]
        # segment values are personal: a keyed digest, never the value
        assert body["segments"]["group"].startswith("hmac-sha256:")
    with server.client() as c:
        assert c.get("/v1/audit/verify").json()["ok"] is True


def test_performance_gauges_are_refreshed_in_the_background(
    server: Server, decided: Decisions, recorded: dict[str, Any]
) -> None:
    """Before anyone reads /performance: the server's own refresh (every second here)."""
    wanted = {'metric="auc"', f'model="{CREDIT}"', 'version="1"'}
    deadline = time.monotonic() + 60
    with server.client() as c:
        while True:
            found = [
                float(line.rsplit(" ", 1)[1])
                for line in c.get("/metrics").text.splitlines()
                if line.startswith("xserve_performance{")
                and set(line[line.index("{") + 1 : line.index("}")].split(",")) == wanted
            ]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert found, "no xserve_performance gauge within 60 s"
        answer = c.get(f"/v1/models/{CREDIT}/performance").json()
    figures = {v["version"]: v for v in answer["versions"]}
    assert found[0] == pytest.approx(figures["1"]["metrics"]["auc"]["value"], abs=1e-9)


def test_the_same_outcomes_again_change_nothing(
    server: Server, decided: Decisions, recorded: dict[str, Any]
) -> None:
    before = len(audit_rows_of(server))
    with server.client() as c:
        r = c.post("/v1/outcomes", json={"outcomes": _items(decided)[:50]})
    assert r.status_code == 200 and r.json() == {"accepted": 0, "unchanged": 50, "refused": []}
    assert len(audit_rows_of(server)) == before


def test_bad_items_are_refused_one_by_one_and_the_rest_recorded(
    server: Server, decided: Decisions, recorded: dict[str, Any]
) -> None:
    (rid, _), *_ = decided.labels
    diabetes = _regression_decision(server)
    items = [
        {"request_id": "no-such-request", "outcome": 1},
        {"request_id": rid, "outcome": 7},
        {"request_id": rid, "instance": ROWS_PER_REQUEST, "outcome": 1},
        {"request_id": diabetes, "outcome": "high"},
        {"request_id": diabetes, "outcome": 151.0},
    ]
    before = len(audit_rows_of(server))
    with server.client() as c:
        r = c.post("/v1/outcomes", json={"outcomes": items})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["accepted"] == 1
    reasons = {x["index"]: x["reason"] for x in body["refused"]}
    assert sorted(reasons) == [0, 1, 2, 3]
    assert "unknown request_id 'no-such-request'" in reasons[0]
    assert "7 is not one of the classes [0, 1]" in reasons[1]
    assert f"instance {ROWS_PER_REQUEST} is not one of the request's" in reasons[2]
    assert "is not a number" in reasons[3]
    assert len(audit_rows_of(server)) == before + 1  # only the good item


def _regression_decision(server: Server) -> str:
    background = pd.read_csv(server.models_dir / "diabetes" / "1" / "background.csv")
    with server.client() as c:
        r = c.post(
            "/v1/models/diabetes/predict", json={"instances": background.head(3).to_dict("records")}
        )
    return str(r.json()["request_id"])


def test_malformed_bodies_are_4xx(server: Server) -> None:
    with server.client() as c:
        for body in ({"outcomes": [{"outcome": 1}]}, {"outcomes": "x"}, {"nope": []}, []):
            r = c.post("/v1/outcomes", json=body)
            assert 400 <= r.status_code < 500, (body, r.text)
            assert set(r.json()) == {"error", "code"}


def _performance(server: Server, version: str | None = None) -> dict[str, Any]:
    path = f"/v1/models/{CREDIT}" + (f"/versions/{version}" if version else "") + "/performance"
    with server.client() as c:
        r = c.get(path)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_performance_equals_scikit_learn_on_the_same_pairs(
    server: Server, decided: Decisions, recorded: dict[str, Any]
) -> None:
    figures = {v["version"]: v for v in _performance(server)["versions"]}
    assert set(figures) == {"1", "2"}
    for version in ("1", "2"):
        keys = sorted(decided.p1[version])
        p1 = np.array([decided.p1[version][k] for k in keys])
        y = np.array([decided.labels[k] for k in keys])
        got = figures[version]
        assert got["n"] == got["decisions"] == len(keys)
        m = got["metrics"]
        assert m["auc"]["value"] == pytest.approx(roc_auc_score(y, p1), abs=1e-9)
        assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, p1 > 0.5), abs=1e-9)
        assert m["brier"]["value"] == pytest.approx(brier_score_loss(y, p1), abs=1e-9)
        for metric in m.values():
            low, high = metric["ci95"]
            assert low <= metric["value"] <= high
    drift = figures["1"]["concept_drift"]
    assert drift["status"] == "drift" and sorted(drift["flagged"]) == ["auc", "brier"]
    assert drift["baseline"] == {"auc": 0.99, "brier": 0.01} and drift["margin"] == 0.05
    assert figures["2"]["concept_drift"]["status"] == "ok"  # accuracy above the manifest's
    assert figures["2"]["concept_drift"]["baseline"] == {"accuracy": 0.1}
    only = _performance(server, "2")["versions"]
    assert [v["version"] for v in only] == ["2"] and only[0]["n"] == figures["2"]["n"]


def test_compare_gives_delongs_test_over_split_traffic(
    server: Server, decided: Decisions, recorded: dict[str, Any]
) -> None:
    with server.client() as c:
        r = c.get(f"/v1/models/{CREDIT}/compare", params={"a": "1", "b": "2", "metric": "auc"})
        q = {"a": "1", "b": "2"}
        brier = c.get(f"/v1/models/{CREDIT}/compare", params={**q, "metric": "brier"})
        bad = c.get(f"/v1/models/{CREDIT}/compare", params={"a": "1", "b": "2", "metric": "f1"})
    assert r.status_code == 200, r.text
    got = r.json()
    arrays = []
    for version in ("1", "2"):
        keys = sorted(decided.p1[version])
        arrays.append(
            (
                np.array([decided.p1[version][k] for k in keys]),
                np.array([decided.labels[k] == 1 for k in keys]),
            )
        )
    expected = delong_test(arrays[0][0], arrays[0][1], arrays[1][0], arrays[1][1])
    assert got["test"] == "delong" and got["paired"] is False
    assert got["difference"] == pytest.approx(expected.difference, abs=1e-12)
    assert got["p_value"] == pytest.approx(expected.p_value, rel=1e-9)
    assert got["n"] == {"a": len(decided.p1["1"]), "b": len(decided.p1["2"])}
    assert got["p_value"] < 0.05  # version 2's outcomes were coin flips
    assert brier.status_code == 200 and brier.json()["test"] == "bootstrap"
    assert bad.status_code == 422 and "metric" in bad.json()["error"]


def test_a_later_outcome_supersedes_the_earlier_one(
    server: Server, decided: Decisions, recorded: dict[str, Any]
) -> None:
    key = sorted(decided.p1["1"])[0]
    flipped = 1 - decided.labels[key]
    with server.client() as c:
        r = c.post("/v1/outcomes", json={"outcomes": [
            {"request_id": key[0], "instance": key[1], "outcome": flipped,
             "segments": {"group": "ab"[key[1] % 2]}}
        ]})  # fmt: skip
    assert r.status_code == 200 and r.json()["accepted"] == 1
    decided.labels[key] = flipped
    rows = [b for b in audit_rows_of(server) if b["kind"] == "outcome"]
    assert sum(1 for b in rows if (b["request_id"], b["instance"]) == key) == 2  # both kept
    test_performance_equals_scikit_learn_on_the_same_pairs(server, decided, recorded)


def test_regression_performance_is_rmse_and_mae(server: Server) -> None:
    """On this test's decisions alone (``since``: an earlier test decided one more)."""
    background = pd.read_csv(server.models_dir / "diabetes" / "1" / "background.csv")
    since = datetime.now(UTC).isoformat()
    with server.client() as c:
        answer = c.post(
            "/v1/models/diabetes/predict",
            json={"instances": background.head(40).to_dict("records")},
        ).json()
        truth = np.linspace(50, 300, 40)
        items = [
            {"request_id": answer["request_id"], "instance": i, "outcome": float(v)}
            for i, v in enumerate(truth)
        ]
        assert c.post("/v1/outcomes", json={"outcomes": items}).status_code == 200
        r = c.get("/v1/models/diabetes/performance", params={"since": since})
    (got,) = r.json()["versions"]
    predictions = np.array(answer["predictions"])
    assert got["n"] == 40 and got["task"] == "regression"
    # 40 pairs, fewer than the minimum: no status, and never "ok"
    assert got["concept_drift"]["status"] == "insufficient_data"
    assert got["metrics"]["rmse"]["value"] == pytest.approx(
        root_mean_squared_error(truth, predictions), rel=1e-9
    )
    assert got["metrics"]["mae"]["value"] == pytest.approx(
        mean_absolute_error(truth, predictions), rel=1e-9
    )


def test_import_from_a_file_records_once_and_refuses_bad_rows(
    server: Server, tmp_path: Path
) -> None:
    background = pd.read_csv(server.models_dir / "diabetes" / "1" / "background.csv")
    with server.client() as c:
        answer = c.post(
            "/v1/models/diabetes/predict",
            json={"instances": background.head(25).to_dict("records")},
        ).json()
    table = pd.DataFrame(
        {
            "rid": [answer["request_id"]] * 25,
            "row": range(25),
            "y": np.linspace(40, 320, 25),
            "region": ["north", "south"] * 12 + ["west"],
        }
    )
    good = tmp_path / "outcomes.parquet"
    table.to_parquet(good)
    db = server.models_dir.parent / f"audit-{server.port}" / "audit.db"
    env = {
        **os.environ,
        "XSERVE_MODELS_DIR": str(server.models_dir),
        "XSERVE_AUDIT_URL": f"sqlite:///{db}",
    }
    command = [sys.executable, "-m", "xserve.cli", "outcomes", "import"]
    options = ["--request-id", "rid", "--outcome", "y", "--instance", "row", "--segment", "region"]

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, str(path), *options], env=env, cwd=tmp_path, capture_output=True, text=True
        )

    first = run(good)
    assert first.returncode == 0, first.stderr
    assert "25 recorded, 0 already in force, 0 refused" in first.stdout
    assert "importing outcomes" in first.stderr  # the progress bar
    again = run(good)
    assert again.returncode == 0 and "0 recorded, 25 already in force" in again.stdout
    stored = [
        b for b in audit_rows_of(server)
        if b["kind"] == "outcome" and b["request_id"] == answer["request_id"]
    ]  # fmt: skip
    assert len(stored) == 25
    assert all("north" not in json.dumps(b) and "south" not in json.dumps(b) for b in stored)
    bad = tmp_path / "bad.csv"
    table.assign(y=["high"] + [1.0] * 24, rid=["nope"] * 2 + [answer["request_id"]] * 23).to_csv(
        bad, index=False
    )
    refused = run(bad)
    assert refused.returncode == 1
    assert "row 1: unknown request_id 'nope'" in refused.stderr
    assert "row 2: unknown request_id 'nope'" in refused.stderr
    assert "23 recorded" in refused.stdout  # new outcomes (1.0) for rows 3 to 25


def test_compare_over_shadow_traffic_is_paired(server: Server) -> None:
    """Version 1 decides, version 2 shadows it: both scored the same decisions, so the
    comparison pairs them (paired DeLong, McNemar), on those decisions alone."""
    (server.models_dir / CREDIT / "deployment.yaml").write_text(
        "policy: pinned\npinned: '1'\nshadow: '2'\n"
    )
    background = pd.read_csv(server.models_dir / CREDIT / "1" / "background.csv").head(80)
    rng = np.random.default_rng(11)
    since = datetime.now(UTC).isoformat()
    with server.client() as c:
        deadline = time.monotonic() + 30
        while c.get(f"/v1/models/{CREDIT}").json()["traffic"].get("shadow") != "2":
            assert time.monotonic() < deadline, "the shadow policy was not picked up"
            time.sleep(0.2)
        answer = c.post(
            f"/v1/models/{CREDIT}/predict", json={"instances": background.to_dict("records")}
        ).json()
        assert answer["version"] == "1"
        labels = [int(rng.uniform() < p[1]) for p in answer["probabilities"]]
        items = [
            {"request_id": answer["request_id"], "instance": i, "outcome": y}
            for i, y in enumerate(labels)
        ]
        assert c.post("/v1/outcomes", json={"outcomes": items}).status_code == 200
        deadline = time.monotonic() + 30
        while True:  # shadow records are written after the live answer
            q = {"a": "1", "b": "2", "since": since}
            auc = c.get(f"/v1/models/{CREDIT}/compare", params={**q, "metric": "auc"}).json()
            if auc.get("n") == {"a": 80, "b": 80} or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        accuracy = c.get(f"/v1/models/{CREDIT}/compare", params={**q, "metric": "accuracy"}).json()
    assert auc["paired"] is True and auc["test"] == "delong_paired", auc
    assert auc["n"] == {"a": 80, "b": 80}
    # Same trees, shifted base score: the same ranking, so the same AUC.
    assert auc["difference"] == pytest.approx(0.0, abs=1e-12)
    assert accuracy["test"] == "mcnemar_exact" and accuracy["paired"] is True
    p1 = np.array([p[1] for p in answer["probabilities"]])
    assert accuracy["a"] == pytest.approx(accuracy_score(labels, p1 > 0.5), abs=1e-12)


def test_the_report_shows_performance_significance_and_fair_lending(
    server: Server, decided: Decisions, recorded: dict[str, Any], tmp_path: Path
) -> None:
    db = server.models_dir.parent / f"audit-{server.port}" / "audit.db"
    done = subprocess.run(
        [sys.executable, "-m", "xserve.cli", "report", CREDIT, "--version", "1",
         "--segment-values", "group=a", "--models-dir", str(server.models_dir),
         "--audit-url", f"sqlite:///{db}", "--out-dir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    html = parse_html(Path(done.stdout.strip().splitlines()[-1]))
    versions = [row[0] for row in html.tables["performance-table"]]
    assert versions == ["1", "2"]
    assert html.column("performance-table", "1", 6) == "drift"  # against evaluation.json
    assert "Version 2 against version 1, auc" in html.text and "(delong" in html.text
    # Fair lending by hand, over version 1's decisions with a group: adverse = class 1.
    groups: dict[str, list[tuple[bool, bool]]] = {"a": [], "b": []}
    for (rid, i), p1 in decided.p1["1"].items():
        groups["ab"[i % 2]].append((p1 > 0.5, decided.labels[(rid, i)] == 0))
    rates = {g: np.mean([d for d, _ in pairs]) for g, pairs in groups.items()}
    best = min(rates, key=lambda g: rates[g])
    table = {row[0]: row for row in html.tables["fairness-group"]}
    assert set(table) == {"a", "other #1"}  # b's value was not named: never shown
    for group, label in (("a", "a"), ("b", "other #1")):
        row = table[label]
        assert row[1] == str(len(groups[group]))
        assert row[2] == f"{rates[group]:.4f}"
        assert row[3] == f"{(1 - rates[group]) / (1 - rates[best]):.4f}"
        tpr = np.mean([not d for d, favourable in groups[group] if favourable])
        assert row[4] == f"{tpr:.4f}"
    assert '"b"' not in done.stdout and "hmac-sha256" not in html.text
