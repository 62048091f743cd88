"""The ``xserve`` command, run as a subprocess over a private copy of the demo models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
import xgboost as xgb
import yaml
from sklearn.linear_model import LogisticRegression

from tests.native import native_outputs
from tests.server import DEMO_MODELS, copy_demo_models
from xserve.repository.manifest import file_sha256
from xserve.repository.version import load_version

FEATURES = ["income", "debt", "age", "tenure"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_demo_models(tmp_path / "models")


def xserve(repo: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``xserve ARGS`` as a user would, with the repository in XSERVE_MODELS_DIR."""
    env = {**os.environ, "XSERVE_MODELS_DIR": str(repo)}
    return subprocess.run(
        [sys.executable, "-m", "xserve.cli", *map(str, args)],
        cwd=repo.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _sample(n: int = 300) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, len(FEATURES)))
    y = (x[:, 0] - x[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(int)
    return x, y


def _train_xgboost(path: Path, named: bool) -> xgb.Booster:
    x, y = _sample()
    dtrain = xgb.DMatrix(x, label=y, feature_names=FEATURES if named else None)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, dtrain, num_boost_round=8)
    booster.save_model(path)
    return booster


def _write_background(path: Path, n: int = 40) -> pd.DataFrame:
    frame = pd.DataFrame(_sample()[0][:n], columns=FEATURES)
    frame.to_csv(path, index=False)
    return frame


def _versions(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir()) if model_dir.exists() else []


def _manifest(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "xserve.yaml").read_text())  # type: ignore[no-any-return]


def _assert_failed_cleanly(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


# -- deploy ---------------------------------------------------------------


def test_deploy_xgboost_with_feature_names_adds_versions(repo: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "booster.json"
    booster = _train_xgboost(artifact, named=True)
    for expected in ("1", "2"):
        result = xserve(repo, "deploy", artifact, "--name", "scorer")
        assert result.returncode == 0, result.stderr
        assert f"version {expected}" in result.stdout
    assert _versions(repo / "scorer") == ["1", "2"]  # and no staging folder left over
    for version in ("1", "2"):
        folder = repo / "scorer" / version
        manifest = _manifest(folder)
        assert manifest["flavor"] == "xgboost" and manifest["artifact"] == "booster.json"
        assert manifest["sha256"] == {"booster.json": file_sha256(artifact)}
        assert file_sha256(folder / "booster.json") == file_sha256(artifact)
        model = load_version("scorer", version, folder)
        assert model.feature_names == FEATURES
        assert model.task == "classification" and model.classes == [0, 1]
        x = _sample()[0][:20]
        p = booster.predict(xgb.DMatrix(x, feature_names=FEATURES))
        np.testing.assert_allclose(model.runtime.predict(x)[:, 1], p, rtol=1e-6)


def test_deploy_xgboost_without_feature_names_takes_them_from_background(
    repo: Path, tmp_path: Path
) -> None:
    artifact = tmp_path / "anonymous.json"
    _train_xgboost(artifact, named=False)
    refused = xserve(repo, "deploy", artifact, "--name", "anon")
    _assert_failed_cleanly(refused, "no feature names", "--background")
    assert not (repo / "anon").exists()

    background = tmp_path / "sample.csv"
    frame = _write_background(background)
    result = xserve(repo, "deploy", artifact, "--name", "anon", "--background", background)
    assert result.returncode == 0, result.stderr
    folder = repo / "anon" / "1"
    manifest = _manifest(folder)
    assert [f["name"] for f in manifest["features"]] == FEATURES
    assert manifest["sha256"]["anonymous.json"] == file_sha256(artifact)
    model = load_version("anon", "1", folder)
    assert model.feature_names == FEATURES
    assert model.background is not None
    np.testing.assert_allclose(model.background, frame.to_numpy())


def test_deploy_refuses_a_background_that_does_not_fit(repo: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "anonymous.json"
    _train_xgboost(artifact, named=False)
    narrow = tmp_path / "narrow.csv"
    _write_background(narrow)
    pd.read_csv(narrow).drop(columns=["tenure"]).to_csv(narrow, index=False)
    result = xserve(repo, "deploy", artifact, "--name", "anon", "--background", narrow)
    _assert_failed_cleanly(result, "3 listed, the model takes 4")
    assert ".deploy-" not in result.stderr  # the caller's files are named, not staging copies
    assert not (repo / "anon").exists()


def test_deploy_of_a_corrupt_artifact_fails_and_leaves_no_version(
    repo: Path, tmp_path: Path
) -> None:
    artifact = tmp_path / "model.json"
    artifact.write_text('{"learner": {"gradient_booster": ')  # a truncated model
    result = xserve(repo, "deploy", artifact, "--name", "credit-risk")
    _assert_failed_cleanly(result, "cannot deploy", "model.json", "not a loadable XGBoost model")
    assert ".deploy-" not in result.stderr
    assert _versions(repo / "credit-risk") == ["1"]

    result = xserve(repo, "deploy", artifact, "--name", "brand-new")
    _assert_failed_cleanly(result, "not a loadable XGBoost model")
    assert not (repo / "brand-new").exists()


def test_deploy_of_a_pickle_needs_trusted(repo: Path, tmp_path: Path) -> None:
    x, y = _sample()
    labels = np.where(y, "bad", "good")
    estimator = LogisticRegression().fit(pd.DataFrame(x, columns=FEATURES), labels)
    artifact = tmp_path / "logreg.joblib"
    joblib.dump(estimator, artifact)

    refused = xserve(repo, "deploy", artifact, "--name", "logreg")
    _assert_failed_cleanly(refused, "pickle", "--trusted")
    assert not (repo / "logreg").exists()

    result = xserve(repo, "deploy", artifact, "--name", "logreg", "--trusted", "--allow-no-inline")
    assert result.returncode == 0, result.stderr
    folder = repo / "logreg" / "1"
    manifest = _manifest(folder)
    assert manifest["trusted"] is True and manifest["flavor"] == "sklearn"
    assert manifest["sha256"] == {"logreg.joblib": file_sha256(artifact)}
    model = load_version("logreg", "1", folder)
    assert model.classes == ["bad", "good"] and model.feature_names == FEATURES
    np.testing.assert_allclose(
        model.runtime.predict(x[:25]),
        estimator.predict_proba(pd.DataFrame(x[:25], columns=FEATURES)),
        rtol=1e-12,
    )


# -- predict --------------------------------------------------------------


def _read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _write(frame: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


@pytest.mark.parametrize(
    ("name", "source", "target"),  # every demo model, every pair of formats
    [
        ("credit-risk", "csv", "parquet"),
        ("breast-cancer", "parquet", "csv"),
        ("diabetes", "csv", "csv"),
        ("iris", "parquet", "parquet"),
    ],
)
def test_predict_file_equals_native_library(
    repo: Path, tmp_path: Path, name: str, source: str, target: str
) -> None:
    manifest = _manifest(DEMO_MODELS / name / "1")
    frame = pd.read_csv(DEMO_MODELS / name / "1" / "background.csv").head(60)
    data, out = tmp_path / f"in.{source}", tmp_path / f"out.{target}"
    _write(frame, data)

    result = xserve(repo, "predict", name, "--data", data, "--out", out, "--batch-size", "16")
    assert result.returncode == 0, result.stderr
    predicted = _read(out)
    expected = native_outputs(
        manifest["flavor"],
        DEMO_MODELS / name / "1" / manifest["artifact"],
        frame.to_numpy(dtype=np.float64),
    )
    if manifest["task"] == "classification":
        classes = manifest["classes"]
        probability_columns = [f"probability_{c}" for c in classes]
        assert list(predicted.columns) == [*frame.columns, "prediction", *probability_columns]
        np.testing.assert_allclose(
            predicted[probability_columns].to_numpy(), expected, rtol=1e-6, atol=1e-7
        )
        assert predicted["prediction"].tolist() == [classes[i] for i in expected.argmax(axis=1)]
    else:
        assert list(predicted.columns) == [*frame.columns, "prediction"]
        np.testing.assert_allclose(predicted["prediction"], expected, rtol=1e-9)
    pd.testing.assert_frame_equal(predicted[frame.columns], frame, check_dtype=False)


def test_predict_a_deployed_model(repo: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "booster.json"
    booster = _train_xgboost(artifact, named=True)
    assert xserve(repo, "deploy", artifact, "--name", "scorer").returncode == 0
    data = tmp_path / "applicants.parquet"
    frame = pd.DataFrame(_sample()[0][:50], columns=FEATURES)
    _write(frame, data)
    out = tmp_path / "scored.parquet"
    result = xserve(repo, "predict", "scorer", "--data", data, "--out", out, "--version", "1")
    assert result.returncode == 0, result.stderr
    p = booster.predict(xgb.DMatrix(frame.to_numpy(), feature_names=FEATURES))
    scored = _read(out)
    np.testing.assert_allclose(scored["probability_1"], p, rtol=1e-6)
    assert scored["prediction"].tolist() == (p > 0.5).astype(int).tolist()


def test_predict_to_stdout_with_the_progress_bar_on_stderr(repo: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(DEMO_MODELS / "iris" / "1" / "background.csv").head(30)
    data = tmp_path / "flowers.csv"
    _write(frame, data)
    result = xserve(repo, "predict", "iris", "--data", data)
    assert result.returncode == 0, result.stderr
    assert "30/30" in result.stderr and "100%" in result.stderr
    assert "%|" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == ",".join(
        [
            *frame.columns,
            "prediction",
            "probability_setosa",
            "probability_versicolor",
            "probability_virginica",
        ]
    )
    assert len(lines) == 1 + len(frame)


def test_predict_names_a_missing_feature_column(repo: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(DEMO_MODELS / "credit-risk" / "1" / "background.csv").head(10)
    data, out = tmp_path / "partial.csv", tmp_path / "out.csv"
    _write(frame.drop(columns=["debt_to_income"]), data)
    result = xserve(repo, "predict", "credit-risk", "--data", data, "--out", out)
    _assert_failed_cleanly(result, "missing feature columns", "debt_to_income")
    assert not out.exists()


def test_predict_refuses_empty_cells(repo: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(DEMO_MODELS / "credit-risk" / "1" / "background.csv").head(10)
    frame["annual_income"] = frame["annual_income"].astype(float)
    frame.loc[6, "annual_income"] = np.nan
    data, out = tmp_path / "holes.csv", tmp_path / "out.csv"
    _write(frame, data)
    result = xserve(repo, "predict", "credit-risk", "--data", data, "--out", out)
    _assert_failed_cleanly(result, "annual_income", "row 7")
    assert not out.exists()


def test_predict_of_a_header_only_file_writes_a_header_only_file(
    repo: Path, tmp_path: Path
) -> None:
    background = DEMO_MODELS / "credit-risk" / "1" / "background.csv"
    columns = list(pd.read_csv(background, nrows=0).columns)
    data, out = tmp_path / "none.csv", tmp_path / "out.csv"
    data.write_text(",".join(columns) + "\n")
    result = xserve(repo, "predict", "credit-risk", "--data", data, "--out", out)
    assert result.returncode == 0, result.stderr
    assert out.read_text().strip() == ",".join(
        [*columns, "prediction", "probability_0", "probability_1"]
    )


def test_predict_reports_unreadable_data_and_unknown_models(repo: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    _assert_failed_cleanly(
        xserve(repo, "predict", "iris", "--data", junk),
        "junk.parquet",
        "not a readable CSV or Parquet file",
    )
    data = tmp_path / "flowers.csv"
    _write(pd.read_csv(DEMO_MODELS / "iris" / "1" / "background.csv").head(3), data)
    _assert_failed_cleanly(xserve(repo, "predict", "no-such-model", "--data", data), "not found")
    _assert_failed_cleanly(
        xserve(repo, "predict", "iris", "--data", data, "--version", "7"), "no version '7'"
    )


def test_predict_with_explain_adds_exact_attributions_and_reasons(
    repo: Path, tmp_path: Path
) -> None:
    frame = pd.read_csv(DEMO_MODELS / "credit-risk" / "1" / "background.csv").head(40)
    data = tmp_path / "applicants.csv"
    _write(frame, data)
    out = tmp_path / "explained.csv"
    result = xserve(
        repo,
        "predict",
        "credit-risk",
        "--data",
        data,
        "--out",
        out,
        "--explain",
        "--batch-size",
        "16",
    )
    assert result.returncode == 0, result.stderr
    scored = _read(out)
    booster = xgb.Booster()
    booster.load_model(str(DEMO_MODELS / "credit-risk" / "1" / "model.json"))
    dmatrix = xgb.DMatrix(frame.to_numpy(), feature_names=list(frame.columns))
    contribs = booster.predict(dmatrix, pred_contribs=True)
    # The explained class is the predicted one; class 0's log-odds are class 1's negated.
    sign = np.where(scored["explained_class"] == 1, 1.0, -1.0)
    assert (scored["explained_class"] == scored["prediction"]).all()
    for j, name in enumerate(frame.columns):
        # pred_contribs are float32 sums: a few float32 steps of the margin apart from ours
        np.testing.assert_allclose(
            scored[f"attribution_{name}"], sign * contribs[:, j], rtol=1e-5, atol=1e-6
        )
    np.testing.assert_allclose(scored["base_value"], sign * contribs[:, -1], rtol=1e-6)
    assert (scored["explanation_method"] == "tree_shap").all()
    # Reason codes: the features pushing toward default (class 1), largest first.
    first = json.loads(scored["reason_codes"].iloc[0])
    pushes = contribs[0, :-1]
    expected = [frame.columns[i] for i in np.argsort(-pushes) if pushes[i] > 0][:4]
    assert [r["feature"] for r in first] == expected


def test_predict_with_explain_refuses_a_model_without_inline_explainer(
    repo: Path, tmp_path: Path
) -> None:
    manifest_path = repo / "diabetes" / "1" / "xserve.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest["explain"]["inline"] = "none"
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    data = tmp_path / "patients.csv"
    _write(pd.read_csv(DEMO_MODELS / "diabetes" / "1" / "background.csv").head(5), data)
    result = xserve(repo, "predict", "diabetes", "--data", data, "--explain")
    _assert_failed_cleanly(result, "explain.inline: none")
