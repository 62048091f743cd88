"""``xserve report``: compliance reports (HTML and PDF) and decision notices, made from the
audit log of a real server, checked against figures computed here independently (SQLite
read directly, shap and xgboost called directly, PSI written out by hand, scipy's KS)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import shap
import xgboost as xgb
from scipy import stats

from tests.audit_support import execute, pg_schema
from tests.drift_support import hand_psi
from tests.report_support import audit_rows, parse_html, pdf_images, pdf_text, xserve
from tests.server import copy_demo_models, running_server
from xserve.reports.document import Bullets, Document, Facts, Figure, Paragraph, Section, Table
from xserve.reports.html import render_html

FEATURES = [
    "age",
    "annual_income",
    "debt_to_income",
    "credit_utilization",
    "num_open_accounts",
    "delinquencies_2y",
    "months_employed",
    "loan_amount",
]


@dataclass
class Scenario:
    tmp: Path
    models: Path
    env: dict[str, str]
    records: list[dict[str, Any]]
    explained_id: str
    """A single-instance decision answered with its explanation."""
    plain_id: str
    """A single-instance decision answered without one."""
    plain_reasons: list[str]
    """What the server gives as reasons for the same input when asked to explain."""

    @property
    def background(self) -> pd.DataFrame:
        return pd.read_csv(self.models / "credit-risk" / "1" / "background.csv")

    def v1(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["model"] == "credit-risk" and r["version"] == "1"]

    def traffic(self) -> pd.DataFrame:
        rows = [row for r in self.v1() if r["kind"] != "explain" for row in r["input"]]
        return pd.DataFrame(rows, columns=FEATURES)

    def report(self, *args: str) -> tuple[Path, str]:
        out = self.tmp / "reports"
        done = xserve("report", *args, "--out-dir", str(out), env=self.env, cwd=self.tmp)
        assert done.returncode == 0, done.stderr
        path = Path(done.stdout.strip().splitlines()[-1])
        assert path.is_file() and path.parent == out, path
        return path, done.stderr


def _post(client: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(url, json=body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("reports")
    models = copy_demo_models(tmp / "models")
    shutil.copytree(models / "credit-risk" / "1", models / "credit-risk" / "2")
    background = pd.read_csv(models / "credit-risk" / "1" / "background.csv")
    shifted = background.assign(debt_to_income=background["debt_to_income"] + 0.3)
    one = shifted.head(1).to_dict("records")
    with running_server(models) as srv, srv.client(timeout=90) as c:
        v1 = "/v1/models/credit-risk/versions/1"
        for start in range(0, len(shifted), 20):
            _post(
                c,
                f"{v1}/predict?explain=true",
                {"instances": shifted.iloc[start : start + 20].to_dict("records")},
            )
        explained_id = _post(c, f"{v1}/predict?explain=true", {"instances": one})["request_id"]
        few = pd.read_csv(models / "breast-cancer" / "1" / "background.csv").head(17) * 3.0
        _post(c, "/v1/models/breast-cancer/predict", {"instances": few.to_dict("records")})
        plain_id = _post(c, f"{v1}/predict", {"instances": one})["request_id"]
        again = _post(c, f"{v1}/predict?explain=true", {"instances": one})
        for row in background.head(30).to_dict("records"):  # version 2 shares the traffic
            _post(c, "/v1/models/credit-risk/versions/2/predict", {"instances": [row]})
        _post(
            c,
            f"{v1}/explain?wait=60",
            {"instances": one, "method": "lime", "params": {"num_samples": 500}},
        )
        db = next(tmp.glob("audit-*/audit.db"))
    env = {"XSERVE_MODELS_DIR": str(models), "XSERVE_AUDIT_URL": f"sqlite:///{db}"}
    reasons = [c["reason"] for c in again["explanations"][0]["reason_codes"]]
    yield Scenario(tmp, models, env, audit_rows(db), explained_id, plain_id, reasons)


def _reason_counts(records: list[dict[str, Any]]) -> tuple[Counter[str], Counter[str], int]:
    listed: Counter[str] = Counter()
    principal: Counter[str] = Counter()
    explained = 0
    for r in records:
        for codes in r.get("reason_codes") or []:
            if codes is None:
                continue
            explained += 1
            listed.update({c["feature"] for c in codes})
            if codes:
                principal[codes[0]["feature"]] += 1
    return listed, principal, explained


def _booster(s: Scenario) -> xgb.Booster:
    booster = xgb.Booster()
    booster.load_model(s.models / "credit-risk" / "1" / "model.json")
    return booster


def test_html_report_figures_match_independent_ones(scenario: Scenario) -> None:
    path, stderr = scenario.report("credit-risk", "--version", "1", "--format", "html")
    assert path.name.startswith("credit-risk-1-") and path.suffix == ".html"
    assert "reading audit log" in stderr  # progress is shown for the long steps
    html = parse_html(path)
    v1 = scenario.v1()
    traffic = scenario.traffic()

    summary = html.facts["summary-facts"]
    assert summary["Records of this version"] == str(len(v1))
    assert summary["Decisions of this version"] == str(len(traffic))
    assert summary["Audit chain"].startswith(f"intact: {len(scenario.records)} records")
    assert summary["Drifted features"] == "debt_to_income"
    card = html.facts["model-card-facts"]
    assert card["Flavor"] == "xgboost" and card["Task"] == "classification"
    assert "synthetic data" in card["Limitations"] and card["Background rows"] == "200"

    listed, principal, explained = _reason_counts(v1)
    assert summary["Explained decisions"] == str(explained)
    assert {row[0] for row in html.tables["reason-codes"]} == set(listed)
    for feature, count in listed.items():
        assert html.column("reason-codes", feature, 2) == str(count)
        assert html.column("reason-codes", feature, 4) == str(principal[feature])
        assert html.column("reason-codes", feature, 3) == f"{100 * count / explained:.1f}%"

    booster, bg = _booster(scenario), scenario.background
    explainer = shap.TreeExplainer(booster)
    on_bg = np.abs(explainer.shap_values(bg.to_numpy(float))).mean(axis=0)
    on_traffic = np.abs(explainer.shap_values(traffic.to_numpy(float))).mean(axis=0)
    for j, name in enumerate(FEATURES):
        assert float(html.column("importance-table", name, 1)) == pytest.approx(on_bg[j], rel=1e-4)
        assert float(html.column("importance-table", name, 2)) == pytest.approx(
            on_traffic[j], rel=1e-4
        )

    for name, flag in zip(
        [r[0] for r in html.tables["drift-table"]], html.row_classes["drift-table"], strict=True
    ):
        ref, cur = bg[name].to_numpy(float), traffic[name].to_numpy(float)
        assert float(html.column("drift-table", name, 1)) == pytest.approx(
            hand_psi(ref, cur), abs=6e-5
        )
        ks = stats.ks_2samp(ref, cur).statistic
        assert float(html.column("drift-table", name, 2)) == pytest.approx(ks, abs=6e-5)
        assert (flag == "flag-drift") == (name == "debt_to_income"), (name, flag)
    assert html.column("drift-table", "debt_to_income", 4) == "drift"
    assert html.column("drift-table", "age", 4) == "ok"

    adverse_bg = booster.predict(xgb.DMatrix(bg.astype(float)))
    served = [p[1] for r in v1 if r["kind"] != "explain" for p in r["output"]["probabilities"]]
    prediction = dict((row[0], row[1]) for row in html.tables["prediction-table"])
    assert float(prediction["PSI"]) == pytest.approx(hand_psi(adverse_bg, served), abs=6e-5)
    assert float(prediction["KS"]) == pytest.approx(
        stats.ks_2samp(adverse_bg, served).statistic, abs=6e-5
    )
    assert float(prediction["Mean on traffic"]) == pytest.approx(np.mean(served), abs=6e-5)

    tree = [e for r in v1 for e in r.get("explanations") or [] if e["method"] == "tree_shap"]
    assert html.column("fidelity-table", "tree_shap", 3) == str(len(tree))
    assert html.column("fidelity-table", "tree_shap", 6) == f"{len(tree)}/{len(tree)}"
    assert float(html.column("fidelity-table", "tree_shap", 4)) < 1e-5
    lime = [e for r in v1 for e in r.get("explanations") or [] if e["method"] == "lime"]
    assert len(lime) == 1
    assert float(html.column("fidelity-table", "lime", 7)) == pytest.approx(
        lime[0]["score"], abs=6e-4
    )

    counts = {row[0]: row for row in html.tables["record-counts"]}
    v2 = [r for r in scenario.records if r["model"] == "credit-risk" and r["version"] == "2"]
    assert counts["1"][1] == str(len(v1)) and counts["2"][1] == str(len(v2))
    assert {row[0] for row in html.tables["versions-table"]} == {"1 (this)", "2"}

    pngs = [
        base64.b64decode(src.removeprefix("data:image/png;base64,"))
        for src in html.images
        if src.startswith("data:image/png;base64,")
    ]
    assert len(pngs) == len(html.images) >= 6
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)


def test_pdf_report_has_the_same_figures_as_text(scenario: Scenario) -> None:
    html_path, _ = scenario.report("credit-risk", "--version", "1", "--format", "html")
    path, _ = scenario.report("credit-risk", "--version", "1", "--format", "pdf")
    assert path.suffix == ".pdf" and path.read_bytes().startswith(b"%PDF-")
    html, text = parse_html(html_path), pdf_text(path)
    v1 = scenario.v1()
    digest = html.facts["model-card-facts"]["Artifact SHA-256"]
    assert f"Artifact SHA-256 {digest}" in text
    assert f"Records of this version {len(v1)}" in text
    assert f"Decisions of this version {len(scenario.traffic())}" in text
    psi = html.column("drift-table", "debt_to_income", 1)
    assert re.search(rf"debt_to_income {re.escape(psi)} \S+ \S+ drift", text), text
    assert "Flagged: debt_to_income." in text
    listed, _, _ = _reason_counts(v1)
    assert re.search(
        rf"debt_to_income Debt-to-income ratio too high {listed['debt_to_income']} ", text
    )
    assert "Intended use Demonstrating explanations" in text
    assert pdf_images(path) >= 6


def test_model_without_traffic_gets_a_report_that_says_so(scenario: Scenario) -> None:
    path, _ = scenario.report("diabetes", "--format", "html")
    html = parse_html(path)
    assert path.name.startswith("diabetes-1-")
    assert html.facts["summary-facts"]["Records of this version"] == "0"
    assert "No traffic: no decisions were recorded for diabetes version 1" in html.text
    assert "No decisions were recorded for this version in the period." in html.text
    assert "importance-table" in html.tables and "drift-table" not in html.tables
    assert html.facts["model-card-facts"]["Task"] == "regression"
    # A period before any record: no traffic either, for a model that has some.
    pdf, _ = scenario.report(
        "credit-risk", "--version", "1", "--until", "2000-01-01", "--format", "pdf"
    )
    text = pdf_text(pdf)
    assert "Records of this version 0" in text and "No traffic" in text


def test_drift_over_too_few_rows_is_insufficient_data_not_green(scenario: Scenario) -> None:
    """17 rows (tripled, so far off the background) once drew PSI bars and "Drifted
    features: none"; now the section says the data is insufficient, and nothing else."""
    path, _ = scenario.report("breast-cancer", "--format", "html")
    html = parse_html(path)
    assert "Insufficient data: 17 rows served in the period, fewer than the 30" in html.text
    assert "No feature is flagged" not in html.text and "drift-table" not in html.tables


def test_reports_are_named_for_their_period(scenario: Scenario) -> None:
    """Two periods never share a file name, so no report silently replaces another."""
    march, _ = scenario.report("diabetes", "--since", "2025-03-01", "--until", "2025-03-31")
    assert march.name == "diabetes-1-2025-03-01_2025-03-31.html"
    april, _ = scenario.report("diabetes", "--since", "2025-04-01T06:30:00+02:00")
    assert re.fullmatch(r"diabetes-1-2025-04-01T043000Z_\d{4}-\d\d-\d\dT\d{6}Z\.html", april.name)
    everything, _ = scenario.report("diabetes", "--until", "2025-03-31")
    assert everything.name == "diabetes-1-start_2025-03-31.html"
    assert len({march, april, everything}) == 3 and all(p.is_file() for p in (march, april))


def test_decision_notice_gives_the_recorded_reasons_and_hash(scenario: Scenario) -> None:
    record = next(r for r in scenario.records if r["request_id"] == scenario.explained_id)
    recorded = [c["reason"] for c in record["reason_codes"][0]]
    assert recorded  # the shifted applicant has reasons to give
    path, _ = scenario.report("--decision", scenario.explained_id, "--format", "html")
    assert path.name == f"decision-{scenario.explained_id}.html"
    html = parse_html(path)
    assert html.lists["reasons-0"] == recorded
    assert record["hash"] in html.text
    facts = html.facts["decision-facts-0"]
    label = record["output"]["predictions"][0]
    assert facts["Outcome"].startswith(f"class {label}")
    assert facts["Model"] == "credit-risk version 1" and facts["Time (UTC)"] == record["time"]
    pdf, _ = scenario.report("--decision", scenario.explained_id, "--format", "pdf")
    text = pdf_text(pdf)
    assert record["hash"] in text and scenario.explained_id in text
    positions = [text.index(reason) for reason in recorded]
    assert positions == sorted(positions)


def test_notice_of_an_unexplained_decision_computes_the_same_reasons(scenario: Scenario) -> None:
    record = next(r for r in scenario.records if r["request_id"] == scenario.plain_id)
    assert record["reason_codes"] is None
    path, _ = scenario.report("--decision", scenario.plain_id)
    html = parse_html(path)
    assert html.lists["reasons-0"] == scenario.plain_reasons
    assert "computed for this notice by tree_shap" in html.text and record["hash"] in html.text


def test_report_on_a_tampered_log_says_so(scenario: Scenario) -> None:
    db = Path(scenario.env["XSERVE_AUDIT_URL"].removeprefix("sqlite:///"))
    copy = scenario.tmp / "tampered.db"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
        dst.execute(
            "UPDATE audit_records SET body = replace(body, '\"caller\":null', "
            '\'"caller":"mallory"\') WHERE seq = 3'
        )
    env = {**scenario.env, "XSERVE_AUDIT_URL": f"sqlite:///{copy}"}
    done = xserve(
        "report",
        "credit-risk",
        "--version",
        "1",
        "--out-dir",
        str(scenario.tmp / "tampered"),
        env=env,
        cwd=scenario.tmp,
    )
    assert done.returncode == 0, done.stderr
    html = parse_html(Path(done.stdout.strip()))
    assert html.facts["summary-facts"]["Audit chain"].startswith("TAMPERED: record 3: ")
    assert "Audit chain TAMPERED: record 3" in html.text


def test_html_escapes_every_value() -> None:
    hostile = '<script>alert("x")</script> & <b>'
    doc = Document(hostile, hostile, "2025-01-01T00:00:00Z", footer=hostile)
    doc.sections = [
        Section("s", hostile).add(
            Paragraph(hostile),
            Facts("f", [(hostile, hostile)]),
            Table("t", [hostile], [[hostile]], caption=hostile),
            Bullets("b", [hostile]),
            Figure("g", b"\x89PNG", hostile),
        )
    ]
    page = render_html(doc)
    assert "<script>" not in page and "<b>" not in page
    # title (twice), subtitle, footer, section title, paragraph, fact label and value, table
    # header, caption and cell, list item, figure alt text and caption
    assert page.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;") == 14


def test_unknown_decision_is_an_error(scenario: Scenario) -> None:
    done = xserve(
        "report",
        "--decision",
        "no-such-request",
        "--out-dir",
        str(scenario.tmp / "reports"),
        env=scenario.env,
        cwd=scenario.tmp,
    )
    assert done.returncode != 0
    assert "no decision with request id 'no-such-request'" in done.stderr


def test_report_and_notice_from_postgresql(tmp_path: Path) -> None:
    """The same commands over a PostgreSQL audit log, for a 3-class ONNX model."""
    models = copy_demo_models(tmp_path / "models")
    rows = pd.read_csv(models / "iris" / "1" / "background.csv").head(40).to_dict("records")
    with pg_schema() as url:
        with running_server(models, env={"XSERVE_AUDIT_URL": url}) as srv, srv.client() as c:
            ids = [
                _post(c, "/v1/models/iris/predict?explain=true", {"instances": rows[i : i + 10]})[
                    "request_id"
                ]
                for i in range(0, 40, 10)
            ]
        records = [
            {**json.loads(body), "hash": h}
            for body, h in execute(url, "SELECT body, hash FROM audit_records ORDER BY seq")
        ]
        env = {"XSERVE_MODELS_DIR": str(models), "XSERVE_AUDIT_URL": url}
        out = tmp_path / "reports"
        done = xserve("report", "iris", "--out-dir", str(out), env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        notice = xserve(
            "report", "--decision", ids[1], "--out-dir", str(out), env=env, cwd=tmp_path
        )
        assert notice.returncode == 0, notice.stderr
        only = xserve(
            "report",
            "--decision",
            ids[1],
            "--instance",
            "3",
            "--out-dir",
            str(tmp_path / "one"),
            env=env,
            cwd=tmp_path,
        )
        assert only.returncode == 0, only.stderr
    html = parse_html(Path(done.stdout.strip()))
    assert len(records) == 4
    assert html.facts["summary-facts"]["Records of this version"] == "4"
    assert html.facts["summary-facts"]["Decisions of this version"] == "40"
    assert html.facts["summary-facts"]["Audit chain"].startswith("intact: 4 records")
    listed, principal, explained = _reason_counts(records)
    assert explained == 40
    for feature, count in listed.items():
        assert html.column("reason-codes", feature, 2) == str(count)
        assert html.column("reason-codes", feature, 4) == str(principal[feature])
    second = next(r for r in records if r["request_id"] == ids[1])
    page = parse_html(Path(notice.stdout.strip()))
    for i, codes in enumerate(second["reason_codes"]):
        assert page.lists.get(f"reasons-{i}", []) == [c["reason"] for c in codes]
    assert second["hash"] in page.text
    one = parse_html(Path(only.stdout.strip()))
    assert set(one.facts) == {"decision-facts-3"}
    assert one.lists.get("reasons-3", []) == [c["reason"] for c in second["reason_codes"][3]]
