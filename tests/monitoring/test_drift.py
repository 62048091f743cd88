"""Live drift: PSI and KS against independent computations, statuses, the rolling window,
and GET /v1/models/{m}/drift on a real server fed through REST v1 and the V2 protocol."""

from __future__ import annotations

import gc
import math
import re
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tests.drift_support import hand_ks, hand_psi
from tests.server import DEMO_MODELS, Server, copy_demo_models, running_server
from xserve.monitoring.drift import (
    MIN_ROWS,
    DriftMonitor,
    FeatureDrift,
    compare,
    drift_figures,
    ks,
    overall_status,
    psi,
)
from xserve.repository.manifest import Feature
from xserve.repository.version import ModelVersion, load_version

CREDIT = DEMO_MODELS / "credit-risk" / "1"


@pytest.fixture(scope="module")
def credit() -> ModelVersion:
    return load_version("credit-risk", "1", CREDIT)


def test_psi_equals_hand_computation() -> None:
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(0, 1, 500), rng.normal(0.4, 1.3, 300)
    assert psi(ref, cur) == pytest.approx(hand_psi(ref, cur), rel=1e-12)
    # Few distinct values: deciles collapse, values equal to an edge fall in its bin.
    ref_d, cur_d = rng.integers(0, 4, 400).astype(float), rng.integers(0, 6, 250).astype(float)
    assert psi(ref_d, cur_d) == pytest.approx(hand_psi(ref_d, cur_d), rel=1e-12)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-12)


def test_ks_equals_scipy_and_hand_computation() -> None:
    rng = np.random.default_rng(2)
    ref, cur = rng.normal(0, 1, 400), rng.normal(0.25, 1, 250)
    statistic, pvalue = ks(ref, cur)
    expected = stats.ks_2samp(ref, cur)
    assert statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert statistic == pytest.approx(hand_ks(ref, cur), abs=1e-12)
    assert pvalue == pytest.approx(expected.pvalue, rel=1e-9)
    # Missing values are left out of KS, not compared as numbers.
    with_nan = np.append(cur, [math.nan, math.nan])
    assert ks(ref, with_nan)[0] == pytest.approx(statistic, abs=1e-12)


def test_shifted_feature_is_flagged_and_stable_one_is_not() -> None:
    rng = np.random.default_rng(3)
    features = [Feature(name="stable"), Feature(name="shifted"), Feature(name="nudged")]
    ref = rng.normal(0, 1, (2000, 3))
    cur = rng.normal(0, 1, (1000, 3))
    cur[:, 1] += 1.0  # a full standard deviation: PSI far above 0.25
    cur[:, 2] += 0.35  # a third of one: PSI between 0.1 and 0.25
    out = compare(features, ref, cur)
    assert out["stable"].status == "ok" and out["stable"].psi is not None
    assert out["stable"].psi < 0.1
    assert out["shifted"].status == "drift" and out["shifted"].psi is not None
    assert out["shifted"].psi > 0.25
    assert out["nudged"].status == "warn", out["nudged"]
    for j, name in enumerate(["stable", "shifted", "nudged"]):
        assert out[name].psi == pytest.approx(hand_psi(ref[:, j], cur[:, j]), rel=1e-12)
        assert out[name].ks == pytest.approx(stats.ks_2samp(ref[:, j], cur[:, j]).statistic)


def test_few_rows_get_figures_but_no_status() -> None:
    ref = np.random.default_rng(4).normal(0, 1, (200, 1))
    out = compare([Feature(name="x")], ref, ref[:10] + 5.0)
    assert out["x"].psi is not None and out["x"].psi > 0.25
    assert out["x"].status is None


def test_a_window_under_the_minimum_is_insufficient_data_never_ok(credit: ModelVersion) -> None:
    """17 rows drew PSI of about 7 and "no drift" once: now no status, no gauge."""
    assert credit.background is not None
    monitor = DriftMonitor(window=500)
    monitor.observe(credit, credit.background[:17] + 3.0)
    report = monitor.report(credit)
    assert report["status"] == "insufficient_data"
    assert all(f["status"] is None for f in report["features"].values())
    assert monitor.figures() == []  # no gauge until MIN_ROWS rows
    monitor.observe(credit, credit.background[: MIN_ROWS - 17])
    assert monitor.report(credit)["status"] in ("ok", "warn", "drift")
    assert len(monitor.figures()) == len(credit.features)


def test_overall_status_is_the_worst_feature_status() -> None:
    def f(status: str | None) -> FeatureDrift:
        return FeatureDrift(0.0, 0.0, 1.0, status)  # type: ignore[arg-type]

    assert overall_status([f("ok"), f("warn")], MIN_ROWS) == "warn"
    assert overall_status([f("drift"), f("warn")], MIN_ROWS) == "drift"
    assert overall_status([f("ok")], MIN_ROWS) == "ok"
    assert overall_status([f(None)], MIN_ROWS) == "no_reference"
    assert overall_status([f("drift")], MIN_ROWS - 1) == "insufficient_data"


def test_window_keeps_only_the_last_rows(credit: ModelVersion) -> None:
    monitor = DriftMonitor(window=100)
    width = len(credit.features)
    batches = [np.full((30, width), float(i)) for i in range(7)]
    alive = [weakref.ref(b) for b in batches]
    for batch in batches:
        monitor.observe(credit, batch)
    del batch
    sent = np.concatenate(batches)
    batches.clear()
    gc.collect()
    rows, since, until = monitor.rows(credit)
    np.testing.assert_array_equal(rows, sent[-100:])
    assert since is not None and until is not None and since <= until
    # Whole batches are let go once the rest fills the window: memory stays bounded.
    held = [i for i, ref in enumerate(alive) if ref() is not None]
    assert held == [3, 4, 5, 6]
    # One batch larger than the window keeps only its last rows.
    monitor.observe(credit, np.ones((500, width)))
    gc.collect()
    assert all(ref() is None for ref in alive)
    rows, _, _ = monitor.rows(credit)
    np.testing.assert_array_equal(rows, np.ones((100, width)))


def test_no_traffic_gives_zero_rows_and_null_figures(credit: ModelVersion) -> None:
    report = DriftMonitor(window=50).report(credit)
    assert report["window"] == {"rows": 0, "size": 50, "since": None, "until": None}
    assert set(report["features"]) == set(credit.feature_names)
    for figures in report["features"].values():
        assert figures == {"psi": None, "ks": None, "ks_pvalue": None, "status": None}


def test_figures_for_gauges_cover_every_feature(credit: ModelVersion) -> None:
    monitor = DriftMonitor(window=300)
    assert credit.background is not None
    shifted = credit.background.copy()
    shifted[:, credit.feature_names.index("debt_to_income")] += 0.3
    monitor.observe(credit, shifted)
    mine = {f.feature: f for f in drift_figures() if f.model == "credit-risk"}
    assert set(mine) == set(credit.feature_names)
    assert mine["debt_to_income"].status == "drift" and mine["age"].psi == pytest.approx(0.0)
    del monitor


# -- over HTTP ---------------------------------------------------------------------------

WINDOW = 200


@pytest.fixture(scope="module")
def drift_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = copy_demo_models(tmp_path_factory.mktemp("drift") / "models")
    with running_server(root, env={"XSERVE_DRIFT_WINDOW": str(WINDOW)}) as srv:
        yield srv


def _background(path: Path) -> pd.DataFrame:
    return pd.read_csv(path / "background.csv")


def test_drift_endpoint_before_traffic(drift_server: Server) -> None:
    with drift_server.client() as c:
        r = c.get("/v1/models/breast-cancer/drift")
        assert r.status_code == 200, r.text
        body = r.json()
        assert c.get("/v1/models/no-such-model/drift").status_code == 404
        assert c.get("/v1/models/credit-risk/versions/9/drift").status_code == 404
    assert body["model"] == "breast-cancer" and body["version"] == "1"
    assert body["window"]["rows"] == 0 and body["window"]["since"] is None
    assert body["status"] == "insufficient_data"
    assert all(f["psi"] is None and f["status"] is None for f in body["features"].values())


def test_drift_endpoint_after_shifted_traffic(drift_server: Server) -> None:
    background = _background(CREDIT)
    names = list(background.columns)
    # First 50 rows with a huge age shift, then the background with debt_to_income shifted:
    # the window (200 rows) must hold only the latter, or age would show drift too.
    early = background.head(50).copy()
    early["age"] = early["age"] + 40
    late = background.copy()
    late["debt_to_income"] = late["debt_to_income"] + 0.3
    with drift_server.client() as c:
        r = c.post("/v1/models/credit-risk/predict", json={"instances": early.to_dict("records")})
        assert r.status_code == 200, r.text
        for i, start in enumerate(range(0, len(late), 25)):
            part = late.iloc[start : start + 25]
            if i % 2:  # every other batch through the Open Inference Protocol
                x = part.to_numpy(dtype=float)
                body = {
                    "inputs": [
                        {
                            "name": "input-0",
                            "shape": list(x.shape),
                            "datatype": "FP64",
                            "data": x.reshape(-1).tolist(),
                        }
                    ]
                }
                r = c.post("/v2/models/credit-risk/infer", json=body)
            else:
                r = c.post(
                    "/v1/models/credit-risk/predict", json={"instances": part.to_dict("records")}
                )
            assert r.status_code == 200, r.text
        serving = c.get("/v1/models/credit-risk/drift").json()
        by_version = c.get("/v1/models/credit-risk/versions/1/drift").json()
        metrics = c.get("/metrics").text
    assert serving["window"]["rows"] == WINDOW
    assert serving["window"]["size"] == WINDOW
    assert serving["window"]["since"] <= serving["window"]["until"]
    assert by_version["features"] == serving["features"]
    features = serving["features"]
    for name in names:
        ref, cur = background[name].to_numpy(float), late[name].to_numpy(float)
        assert features[name]["psi"] == pytest.approx(hand_psi(ref, cur), abs=1e-9), name
        expected = stats.ks_2samp(ref, cur)
        assert features[name]["ks"] == pytest.approx(expected.statistic, abs=1e-12), name
        assert features[name]["ks_pvalue"] == pytest.approx(expected.pvalue, rel=1e-6), name
    assert features["debt_to_income"]["status"] == "drift" and serving["status"] == "drift"
    assert features["age"]["status"] == "ok" and features["age"]["psi"] == pytest.approx(0.0)
    assert all(features[n]["status"] == "ok" for n in names if n != "debt_to_income")
    # The same figures as Prometheus gauges (one server process: its window is the one read).
    gauges = _samples(metrics)
    for name in names:
        key = ("credit-risk", "1", name)
        assert gauges["xserve_drift_psi"][key] == pytest.approx(features[name]["psi"], abs=1e-12)
        assert gauges["xserve_drift_ks"][key] == pytest.approx(features[name]["ks"], abs=1e-12)


def _samples(text: str) -> dict[str, dict[tuple[str, str, str], float]]:
    """Drift gauge samples of a /metrics page by (model, version, feature), in any label order."""
    out: dict[str, dict[tuple[str, str, str], float]] = {
        "xserve_drift_psi": {},
        "xserve_drift_ks": {},
    }
    for line in text.splitlines():
        found = re.match(r"^(xserve_drift_psi|xserve_drift_ks)\{(.*)\} (\S+)$", line)
        if found:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2)))
            key = (labels["model"], labels["version"], labels["feature"])
            out[found.group(1)][key] = float(found.group(3))
    return out
