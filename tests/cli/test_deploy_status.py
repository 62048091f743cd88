"""``xserve deploy`` says whether the version got an inline explainer, and refuses one that
did not unless ``--allow-no-inline`` is given; such a version's ``explain=true`` answers 422
``not_explainable`` naming the job methods that can explain it instead.

The model without an inline explainer is a real one: a logistic regression exported to ONNX
(xserve's ONNX explainer reads tree ensembles only; its linear explainer reads scikit-learn
models only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from tests.server import Server, running_server
from xserve.explainers.attach import attach_inline
from xserve.explainers.describe import no_inline_message
from xserve.repository.version import load_version

FEATURES = ["income", "debt", "age", "tenure"]


def xserve(models: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``xserve ARGS`` as a user would, with the repository in XSERVE_MODELS_DIR."""
    env = {**os.environ, "XSERVE_MODELS_DIR": str(models)}
    return subprocess.run(
        [sys.executable, "-m", "xserve.cli", *map(str, args)],
        cwd=models.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def sample(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] - x[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(int)
    return x, y


def write_onnx(folder: Path, estimator: object) -> tuple[Path, Path]:
    """``estimator`` fitted and exported to ONNX, and a background CSV naming the features."""
    x, y = sample()
    estimator.fit(x, y)  # type: ignore[attr-defined]
    onx = to_onnx(estimator, x[:1], options={id(estimator): {"zipmap": False}})
    folder.mkdir(parents=True, exist_ok=True)
    artifact, background = folder / "model.onnx", folder / "bg.csv"
    artifact.write_bytes(onx.SerializeToString())
    pd.DataFrame(x[:60], columns=FEATURES).to_csv(background, index=False)
    return artifact, background


@pytest.fixture(scope="module")
def linear_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_onnx(tmp_path_factory.mktemp("linear"), LogisticRegression())


def test_deploy_without_inline_explainer_fails_and_leaves_nothing(
    tmp_path: Path, linear_onnx: tuple[Path, Path]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    artifact, background = linear_onnx
    result = xserve(models, "deploy", artifact, "--name", "linear", "--background", background)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    message = result.stderr
    assert "without an inline explainer" in message
    assert "tree_shap is not available" in message or "not available" in message
    assert "422 not_explainable" in message
    assert "POST /v1/models/linear/explain with method kernel_shap, lime, anchors" in message
    assert "--allow-no-inline" in message
    assert not (models / "linear").exists()  # no version, no staging folder


def test_deploy_with_inline_explainer_names_it(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    artifact, background = write_onnx(
        tmp_path / "forest", RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0)
    )
    result = xserve(models, "deploy", artifact, "--name", "forest", "--background", background)
    assert result.returncode == 0, result.stderr
    assert "deployed forest version 1" in result.stdout
    assert "inline explainer: tree_shap (probability space)" in result.stdout
    assert "warning" not in result.stderr


@pytest.fixture(scope="module")
def allowed(
    tmp_path_factory: pytest.TempPathFactory, linear_onnx: tuple[Path, Path]
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The linear model deployed with --allow-no-inline: its repository and the output."""
    models = tmp_path_factory.mktemp("served") / "models"
    models.mkdir()
    artifact, background = linear_onnx
    args = ("--name", "linear", "--background", background, "--allow-no-inline")
    return models, xserve(models, "deploy", artifact, *args)


def test_deploy_with_allow_no_inline_says_so(
    allowed: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    models, result = allowed
    assert result.returncode == 0, result.stderr
    assert "deployed linear version 1" in result.stdout
    assert "warning: NO inline explainer" in result.stderr
    assert "explain=true answers 422 not_explainable" in result.stderr
    assert (models / "linear" / "1" / "model.onnx").is_file()


@pytest.fixture(scope="module")
def served_without_inline(
    allowed: tuple[Path, subprocess.CompletedProcess[str]],
) -> Iterator[Server]:
    models, result = allowed
    assert result.returncode == 0, result.stderr
    with running_server(models) as server:
        yield server


def test_explain_true_without_inline_names_the_job_methods(served_without_inline: Server) -> None:
    rows = [dict(zip(FEATURES, map(float, r), strict=True)) for r in sample()[0][:2]]
    with served_without_inline.client() as c:
        explained = c.post("/v1/models/linear/predict?explain=true", json={"instances": rows})
        plain = c.post("/v1/models/linear/predict", json={"instances": rows})
    assert explained.status_code == 422, explained.text
    body = explained.json()
    assert body["code"] == "not_explainable"
    assert "has no inline explainer" in body["error"]
    assert "POST /v1/models/linear/explain with method kernel_shap, lime, anchors" in body["error"]
    assert plain.status_code == 200, plain.text  # predictions still serve
    assert len(plain.json()["predictions"]) == 2


def test_without_background_the_message_says_why_no_job_method_can_explain(
    tmp_path: Path, linear_onnx: tuple[Path, Path]
) -> None:
    folder = tmp_path / "linear" / "1"
    folder.mkdir(parents=True)
    shutil.copy2(linear_onnx[0], folder / "model.onnx")
    manifest = {"artifact": "model.onnx", "features": [{"name": n} for n in FEATURES]}
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest))
    model = attach_inline(load_version("linear", "1", folder))
    assert model.inline is None
    message = no_inline_message(model)
    assert message.startswith("model 'linear' version 1 has no inline explainer (")
    assert "no explanation job method can explain it either" in message
    assert "kernel_shap needs the version's background sample" in message
