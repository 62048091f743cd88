"""The lightgbm flavor: Booster text files and JSON dumps, against LightGBM's own predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import yaml
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from xserve.errors import ModelLoadError
from xserve.repository.version import ModelVersion, load_version
from xserve.runtimes import get_runtime, infer_flavor
from xserve.runtimes.lightgbm import PARALLEL_ROWS, LightGBMRuntime

CANCER_X, CANCER_Y = load_breast_cancer(return_X_y=True)
IRIS_X, IRIS_Y = load_iris(return_X_y=True)
DIABETES_X, DIABETES_Y = load_diabetes(return_X_y=True)


def train(objective: str, x: np.ndarray, y: np.ndarray, **params: Any) -> lgb.Booster:
    data = lgb.Dataset(x, y, params={"verbose": -1})
    return lgb.train(
        {"objective": objective, "num_leaves": 8, "verbose": -1, "num_threads": 1, **params},
        data,
        num_boost_round=15,
    )


def load(folder: Path, booster: lgb.Booster, artifact: str, **manifest: Any) -> ModelVersion:
    folder.mkdir(parents=True)
    if artifact.endswith(".json"):
        (folder / artifact).write_text(json.dumps(booster.dump_model()))
        manifest.setdefault("flavor", "lightgbm")
    else:
        booster.save_model(str(folder / artifact))
    n = booster.num_feature()
    manifest.setdefault("features", [{"name": f"f{i}"} for i in range(n)])
    (folder / "xserve.yaml").write_text(yaml.safe_dump({"artifact": artifact, **manifest}))
    return load_version("m", "1", folder)


ARTIFACTS = ["model.txt", "model.json"]


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_binary(tmp_path: Path, artifact: str) -> None:
    booster = train("binary", CANCER_X, CANCER_Y)
    model = load(tmp_path / "v", booster, artifact)
    assert model.flavor == "lightgbm" and model.task == "classification"
    assert model.classes == [0, 1]
    out = model.runtime.predict(CANCER_X)
    assert out.shape == (len(CANCER_X), 2) and out.dtype == np.float64
    np.testing.assert_allclose(out[:, 1], booster.predict(CANCER_X), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_multiclass(tmp_path: Path, artifact: str) -> None:
    booster = train("multiclass", IRIS_X, IRIS_Y, num_class=3)
    model = load(tmp_path / "v", booster, artifact)
    assert model.task == "classification" and model.classes == [0, 1, 2]
    out = model.runtime.predict(IRIS_X)
    assert out.shape == (150, 3)
    np.testing.assert_allclose(out, booster.predict(IRIS_X), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("artifact", ARTIFACTS)
@pytest.mark.parametrize("objective", ["regression", "poisson", "huber"])
def test_regression(tmp_path: Path, artifact: str, objective: str) -> None:
    y = DIABETES_Y if objective != "poisson" else np.round(DIABETES_Y / 10)
    booster = train(objective, DIABETES_X, y)
    model = load(tmp_path / "v", booster, artifact)
    assert model.task == "regression" and model.classes is None
    out = model.runtime.predict(DIABETES_X)
    assert out.shape == (len(DIABETES_X),)
    np.testing.assert_allclose(out, booster.predict(DIABETES_X), rtol=1e-12)


def test_small_batches_run_on_one_thread_alike(tmp_path: Path) -> None:
    booster = train("binary", CANCER_X, CANCER_Y)
    model = load(tmp_path / "v", booster, "model.txt")
    runtime = LightGBMRuntime(tmp_path / "v" / "model.txt", model.manifest, threads=2)
    big = CANCER_X[: 4 * PARALLEL_ROWS]
    whole = runtime.predict(big)
    np.testing.assert_array_equal(runtime.predict(big[: PARALLEL_ROWS - 1]), whole[:63])
    for i in range(3):
        np.testing.assert_array_equal(runtime.predict(big[i : i + 1]), whole[i : i + 1])


def test_feature_names_come_from_the_artifact(tmp_path: Path) -> None:
    names = ["sepal_l", "sepal_w", "petal_l", "petal_w"]
    data = lgb.Dataset(IRIS_X, IRIS_Y, feature_name=names, params={"verbose": -1})
    params = {"objective": "multiclass", "num_class": 3, "verbose": -1}
    booster = lgb.train(params, data, num_boost_round=3)
    model = load(tmp_path / "named", booster, "model.txt", features=None)
    assert model.runtime.feature_names == names
    assert [f.name for f in model.features] == names
    # unnamed columns (LightGBM's Column_0...) carry no names: the manifest gives them
    unnamed = load(tmp_path / "unnamed", train("binary", CANCER_X, CANCER_Y), "model.txt")
    assert unnamed.runtime.feature_names is None


def test_flavor_is_inferred_from_a_text_model() -> None:
    assert infer_flavor(Path("model.txt")) == "lightgbm"
    assert get_runtime("lightgbm") is LightGBMRuntime


@pytest.mark.parametrize(
    ("artifact", "content"),
    [("model.txt", "tree\nnot a model\n"), ("model.json", '{"a": 1}'), ("model.json", "[1")],
)
def test_a_corrupt_model_is_a_load_error(tmp_path: Path, artifact: str, content: str) -> None:
    (tmp_path / artifact).write_text(content)
    from xserve.repository.manifest import Manifest

    with pytest.raises(ModelLoadError, match="LightGBM"):
        LightGBMRuntime(tmp_path / artifact, Manifest(artifact=artifact, flavor="lightgbm"))


def test_a_json_dump_reads_near_zeros_as_lightgbm_does(tmp_path: Path) -> None:
    """LightGBM reads inputs within 1e-35 of 0 as 0, also next to its +-1e-35 thresholds."""
    x = np.round(DIABETES_X, 2)  # many exact zeros: splits at +-1e-35
    booster = train("regression", x, DIABETES_Y, zero_as_missing=True)
    model = load(tmp_path / "v", booster, "model.json")
    rows = np.repeat(x[:20], 4, axis=0)
    rows[:, 3] = np.tile([1e-35, -1e-35, 1e-36, np.nextafter(-1e-35, -1)], 20)
    np.testing.assert_array_equal(model.runtime.predict(rows), booster.predict(rows))


@pytest.mark.parametrize("wrapper", [True, False])
def test_an_mlflow_lightgbm_model_is_unwrapped_into_the_flavor(
    tmp_path: Path, wrapper: bool
) -> None:
    """An MLflow lightgbm model (a Booster, or an LGBMClassifier with string labels)
    deploys as a Booster text file with its labels, and is explained by TreeSHAP."""
    import mlflow.lightgbm
    import pandas as pd
    from mlflow.models import infer_signature

    from xserve.explainers.attach import attach_inline
    from xserve.explainers.lightgbm_shap import LightGBMTreeShap
    from xserve.integrations.mlflow.deploy import deploy_model

    names = ["sepal_l", "sepal_w", "petal_l", "petal_w"]
    frame = pd.DataFrame(IRIS_X, columns=names)
    labels = np.asarray(["setosa", "versicolor", "virginica"], dtype=object)[IRIS_Y]
    model: Any
    if wrapper:
        model = lgb.LGBMClassifier(n_estimators=10, num_leaves=6, verbose=-1).fit(frame, labels)
        expected = model.predict_proba(frame)
    else:
        params = {"objective": "multiclass", "num_class": 3, "num_leaves": 6, "verbose": -1}
        model = lgb.train(params, lgb.Dataset(frame, IRIS_Y, params={"verbose": -1}), 10)
        expected = model.predict(frame)
    source = tmp_path / "mlflow-model"
    mlflow.lightgbm.save_model(model, str(source), signature=infer_signature(frame, expected))
    folder = deploy_model(tmp_path / "models", "iris", str(source))
    manifest = yaml.safe_load((folder / "xserve.yaml").read_text())
    assert (manifest["flavor"], manifest["artifact"]) == ("lightgbm", "model.txt")
    assert manifest["classes"] == (["setosa", "versicolor", "virginica"] if wrapper else [0, 1, 2])
    version = attach_inline(load_version("iris", folder.name, folder))
    assert isinstance(version.inline, LightGBMTreeShap)
    np.testing.assert_allclose(version.runtime.predict(IRIS_X), expected, rtol=1e-12)
    a = version.inline.explain(IRIS_X[:20])
    assert a.values.shape == (20, 4, 3)


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_random_forest_mode_averages_its_trees(tmp_path: Path, artifact: str) -> None:
    booster = train(
        "binary", CANCER_X, CANCER_Y, boosting="rf", bagging_fraction=0.5, bagging_freq=1
    )
    model = load(tmp_path / "v", booster, artifact)
    out = model.runtime.predict(CANCER_X)
    np.testing.assert_allclose(out[:, 1], booster.predict(CANCER_X), rtol=1e-12)
    raw = booster.predict(CANCER_X, raw_score=True) / booster.current_iteration()
    np.testing.assert_allclose(model.runtime.raw_score(CANCER_X), raw, rtol=1e-12)
