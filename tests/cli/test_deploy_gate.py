"""``xserve deploy`` as users run it: a new version inherits what the serving version's
manifest says the model means, and ``--evaluate --gate`` scores both versions on one
holdout and refuses a worse model (checked against scikit-learn on the same holdout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
import yaml
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score
from sklearn.tree import DecisionTreeClassifier

from tests.report_support import parse_html
from tests.server import copy_demo_models

NAME = "breast-cancer"


def xserve(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xserve.cli", *args],
        cwd=cwd,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("gate")
    copy_demo_models(tmp / "models", [NAME, "credit-risk"])
    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    holdout = pd.DataFrame(data.data, columns=names)
    holdout["diagnosis"] = np.asarray(data.target_names)[data.target]
    holdout.to_csv(tmp / "holdout.csv", index=False)
    for file, model in (
        ("weak.skops", DecisionTreeClassifier(max_depth=1, random_state=0)),
        ("good.skops", RandomForestClassifier(n_estimators=60, random_state=1)),
    ):
        sio.dump(model.fit(data.data, data.target), tmp / file)
    yield tmp


def _manifest(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "xserve.yaml").read_text())  # type: ignore[no-any-return]


def _deploy(workdir: Path, artifact: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return xserve(
        workdir, "deploy", str(workdir / artifact), "--name", NAME,
        "--models-dir", str(workdir / "models"), *extra,
    )  # fmt: skip


def test_a_worse_model_is_refused_by_the_gate(workdir: Path) -> None:
    done = _deploy(
        workdir, "weak.skops", "--evaluate", str(workdir / "holdout.csv"),
        "--label", "diagnosis", "--gate", "auc>=-0.01",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the gate failed (auc>=-0.01): the version is not deployed" in done.stderr
    assert "against serving version 1" in done.stdout and "auc:" in done.stdout
    model_dir = workdir / "models" / NAME
    assert sorted(p.name for p in model_dir.iterdir() if p.is_dir()) == ["1"]  # nothing left


def test_a_model_that_passes_is_deployed_with_its_evaluation(workdir: Path) -> None:
    done = _deploy(
        workdir, "good.skops", "--evaluate", str(workdir / "holdout.csv"),
        "--label", "diagnosis", "--gate", "auc>=-0.01", "--gate", "brier<=0.02",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    folder = workdir / "models" / NAME / "2"
    evaluation = json.loads((folder / "evaluation.json").read_text())
    holdout = pd.read_csv(workdir / "holdout.csv")
    y = (holdout.pop("diagnosis") == "benign").to_numpy()  # classes [malignant, benign]
    new = sio.load(
        workdir / "good.skops", trusted=sio.get_untrusted_types(file=workdir / "good.skops")
    )
    p = new.predict_proba(holdout.to_numpy())
    assert evaluation["metrics"]["auc"] == pytest.approx(roc_auc_score(y, p[:, 1]), abs=1e-9)
    assert evaluation["metrics"]["brier"] == pytest.approx(brier_score_loss(y, p[:, 1]), abs=1e-9)
    assert evaluation["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, p[:, 1] > 0.5))
    serving = evaluation["serving"]
    assert serving["version"] == "1"
    for metric, difference in evaluation["differences"].items():
        expected = evaluation["metrics"][metric] - serving["metrics"][metric]["value"]
        assert difference == pytest.approx(expected, abs=1e-12), metric
    assert [g["rule"] for g in evaluation["gate"]] == ["auc>=-0.01", "brier<=0.02"]
    assert evaluation["passed"] is True and all(g["holds"] for g in evaluation["gate"])
    assert 0.5 < evaluation["explanation_stability"] <= 1.0  # two forests: similar reasons
    assert evaluation["holdout"]["rows"] == len(holdout)
    # What the model means came from version 1, background included.
    old, mine = _manifest(workdir / "models" / NAME / "1"), _manifest(folder)
    for key in ("features", "classes", "adverse_class", "description", "limitations"):
        assert mine[key] == old[key], key
    assert (folder / mine["background"]).is_file()


def test_the_model_card_shows_the_evaluation(workdir: Path) -> None:
    evaluation = json.loads((workdir / "models" / NAME / "2" / "evaluation.json").read_text())
    done = xserve(
        workdir, "report", NAME, "--version", "2", "--models-dir", str(workdir / "models"),
        "--audit-url", f"sqlite:///{workdir / 'no-audit.db'}", "--out-dir", str(workdir / "r"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    html = parse_html(Path(done.stdout.strip().splitlines()[-1]))
    auc = evaluation["metrics"]["auc"]
    assert html.column("evaluation-table", "auc", 1) == f"{auc:.4f}"
    assert html.column("evaluation-table", "auc", 2) == f"{evaluation['differences']['auc']:.4f}"
    assert "against version 1; gate: auc>=-0.01 (held), brier<=0.02 (held)" in html.text


def test_a_new_version_inherits_the_serving_manifest(workdir: Path) -> None:
    """The README's own example once dropped every reason text and integer type."""
    source = workdir / "models" / "credit-risk" / "1"
    shutil.copy2(source / "model.json", workdir / "credit.json")
    done = xserve(
        workdir, "deploy", str(workdir / "credit.json"), "--name", "credit-risk",
        "--models-dir", str(workdir / "models"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    old, new = _manifest(source), _manifest(source.parent / "2")
    assert new["features"] == old["features"] and new["reason_codes"] == old["reason_codes"]
    assert {f["type"] for f in new["features"]} >= {"integer", "numeric"}
    assert new["adverse_class"] == old["adverse_class"]
    (workdir / "override.yaml").write_text("limitations: Retrained in 2026; demo only.\n")
    done = xserve(
        workdir, "deploy", str(workdir / "credit.json"), "--name", "credit-risk",
        "--models-dir", str(workdir / "models"), "--manifest", str(workdir / "override.yaml"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    third = _manifest(source.parent / "3")
    assert third["limitations"] == "Retrained in 2026; demo only."
    assert third["reason_codes"] == old["reason_codes"]
    bare = xserve(
        workdir, "deploy", str(workdir / "credit.json"), "--name", "credit-risk",
        "--models-dir", str(workdir / "models"), "--no-inherit",
        "--background", str(source / "background.csv"),
    )  # fmt: skip
    assert bare.returncode == 0, bare.stderr
    fourth = _manifest(source.parent / "4")
    assert "reason_codes" not in fourth and "limitations" not in fourth


def test_promote_applies_the_deployment_gate(workdir: Path) -> None:
    """Runs after the deploys above: versions 1 (demo forest) and 2 (a forest) serve well."""
    model_dir = workdir / "models" / NAME
    shutil.copy2(workdir / "holdout.csv", model_dir / "holdout.csv")
    gate = {"holdout": "holdout.csv", "label": "diagnosis", "rules": ["auc>=-0.01"]}
    (model_dir / "deployment.yaml").write_text(
        yaml.safe_dump({"policy": "pinned", "pinned": "2", "gate": gate})
    )
    weak = _deploy(workdir, "weak.skops")  # no --evaluate: published, but pinned 2 serves
    assert weak.returncode == 0, weak.stderr
    models = str(workdir / "models")
    refused = xserve(workdir, "promote", NAME, "--version", "3", "--models-dir", models)
    assert refused.returncode == 1 and "the gate failed (auc>=-0.01)" in refused.stderr
    assert yaml.safe_load((model_dir / "deployment.yaml").read_text())["pinned"] == "2"
    assert not (model_dir / "3" / "evaluation.json").exists()
    promoted = xserve(workdir, "promote", NAME, "--version", "1", "--models-dir", models)
    assert promoted.returncode == 0, promoted.stderr
    assert "version 1 serves (policy pinned; was 2)" in promoted.stdout
    after = yaml.safe_load((model_dir / "deployment.yaml").read_text())
    assert after["policy"] == "pinned" and after["pinned"] == "1" and after["gate"] == gate
    # A gate whose holdout leaves the model's folder is refused before anything is read.
    (model_dir / "deployment.yaml").write_text(
        yaml.safe_dump(
            {"policy": "pinned", "pinned": "1", "gate": {**gate, "holdout": "../../holdout.csv"}}
        )
    )
    outside = xserve(workdir, "promote", NAME, "--version", "2", "--models-dir", models)
    assert outside.returncode == 1 and "is not a file inside the model's folder" in outside.stderr
