"""Every runtime's ``predict`` equals what the model's own library computes."""

from __future__ import annotations

import builtins
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnxruntime as ort
import pytest
import skops.io as sio
import xgboost as xgb
import yaml
from skl2onnx import to_onnx
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from tests.plugin_support import install_plugin, run_with_plugin
from xserve.errors import ManifestError, ModelLoadError
from xserve.repository.manifest import Manifest
from xserve.repository.version import ModelVersion, load_version
from xserve.runtimes import flavors, get_runtime, infer_flavor
from xserve.runtimes.base import Matrix, Runtime
from xserve.runtimes.xgboost import XGBoostRuntime

IRIS_X, IRIS_Y = load_iris(return_X_y=True)
CANCER_X, CANCER_Y = load_breast_cancer(return_X_y=True)
DIABETES_X, DIABETES_Y = load_diabetes(return_X_y=True)


def features(n: int) -> list[dict[str, str]]:
    return [{"name": f"f{i}"} for i in range(n)]


Saver = Callable[[Path], None]


def load(folder: Path, artifact: str, save: Saver, **manifest: Any) -> ModelVersion:
    """Save an artifact into a fresh version folder with its manifest, and load it."""
    folder.mkdir(parents=True)
    save(folder / artifact)
    (folder / "xserve.yaml").write_text(yaml.safe_dump({"artifact": artifact, **manifest}))
    return load_version("m", "1", folder)


# -- XGBoost -----------------------------------------------------------------------------


def train_xgb(objective: str, x: np.ndarray, y: np.ndarray, **params: Any) -> xgb.Booster:
    return xgb.train(
        {"objective": objective, "max_depth": 3, "eta": 0.3, **params},
        xgb.DMatrix(x, label=y),
        num_boost_round=10,
    )


def load_xgb(tmp_path: Path, booster: xgb.Booster, ext: str, n: int) -> ModelVersion:
    return load(
        tmp_path / ext, f"model.{ext}", lambda p: booster.save_model(str(p)), features=features(n)
    )


@pytest.mark.parametrize("ext", ["json", "ubj"])
def test_xgboost_binary(tmp_path: Path, ext: str) -> None:
    booster = train_xgb("binary:logistic", CANCER_X, CANCER_Y)
    model = load_xgb(tmp_path, booster, ext, CANCER_X.shape[1])
    assert model.flavor == "xgboost" and model.task == "classification" and model.classes == [0, 1]
    p = booster.predict(xgb.DMatrix(CANCER_X))
    out = model.runtime.predict(CANCER_X)
    assert out.shape == (len(CANCER_X), 2) and out.dtype == np.float64
    np.testing.assert_allclose(out[:, 1], p, rtol=1e-6)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("ext", ["json", "ubj"])
def test_xgboost_multiclass_softprob(tmp_path: Path, ext: str) -> None:
    booster = train_xgb("multi:softprob", IRIS_X, IRIS_Y, num_class=3)
    model = load_xgb(tmp_path, booster, ext, 4)
    assert model.task == "classification" and model.classes == [0, 1, 2]
    out = model.runtime.predict(IRIS_X)
    assert out.shape == (150, 3)
    np.testing.assert_allclose(out, booster.predict(xgb.DMatrix(IRIS_X)), rtol=1e-6)


@pytest.mark.parametrize("ext", ["json", "ubj"])
def test_xgboost_multiclass_softmax(tmp_path: Path, ext: str) -> None:
    booster = train_xgb("multi:softmax", IRIS_X, IRIS_Y, num_class=3)
    model = load_xgb(tmp_path, booster, ext, 4)
    assert model.task == "classification" and model.classes == [0, 1, 2]
    out = model.runtime.predict(IRIS_X)
    margin = booster.predict(xgb.DMatrix(IRIS_X), output_margin=True).astype(np.float64)
    expected = np.exp(margin) / np.exp(margin).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # The native library's labels are the most probable classes.
    np.testing.assert_array_equal(out.argmax(axis=1), booster.predict(xgb.DMatrix(IRIS_X)))


@pytest.mark.parametrize("ext", ["json", "ubj"])
def test_xgboost_regression(tmp_path: Path, ext: str) -> None:
    booster = train_xgb("reg:squarederror", DIABETES_X, DIABETES_Y)
    model = load_xgb(tmp_path, booster, ext, DIABETES_X.shape[1])
    assert model.task == "regression" and model.classes is None
    out = model.runtime.predict(DIABETES_X)
    assert out.shape == (len(DIABETES_X),)
    np.testing.assert_allclose(out, booster.predict(xgb.DMatrix(DIABETES_X)), rtol=1e-6)


@pytest.mark.parametrize("ext", ["json", "ubj"])
def test_xgboost_binary_logitraw(tmp_path: Path, ext: str) -> None:
    booster = train_xgb("binary:logitraw", CANCER_X, CANCER_Y)
    model = load_xgb(tmp_path, booster, ext, CANCER_X.shape[1])
    assert model.task == "classification"
    margin = booster.predict(xgb.DMatrix(CANCER_X)).astype(np.float64)  # logitraw: the margin
    out = model.runtime.predict(CANCER_X)
    np.testing.assert_allclose(out[:, 1], 1 / (1 + np.exp(-margin)), rtol=1e-6)
    np.testing.assert_allclose(out[:, 0], 1 / (1 + np.exp(margin)), rtol=1e-6)


@pytest.mark.parametrize("objective", ["binary:logistic", "binary:logitraw"])
def test_xgboost_small_batches_run_on_one_thread_alike(tmp_path: Path, objective: str) -> None:
    """Batches below PARALLEL_ROWS rows (which a one-thread copy of the booster predicts:
    no OpenMP fork and join for nothing) get the same values as the whole batch."""
    from xserve.runtimes.xgboost import PARALLEL_ROWS, XGBoostRuntime

    booster = train_xgb(objective, CANCER_X, CANCER_Y)
    model = load_xgb(tmp_path, booster, "json", CANCER_X.shape[1])
    runtime = XGBoostRuntime(tmp_path / "json" / "model.json", model.manifest, threads=2)
    small, big = CANCER_X[: PARALLEL_ROWS - 1], CANCER_X[: 4 * PARALLEL_ROWS]
    whole = runtime.predict(big)
    np.testing.assert_array_equal(runtime.predict(small), whole[: len(small)])
    for i in range(5):
        np.testing.assert_array_equal(runtime.predict(big[i : i + 1]), whole[i : i + 1])


def test_xgboost_feature_names_from_the_artifact(tmp_path: Path) -> None:
    names = ["sepal_l", "sepal_w", "petal_l", "petal_w"]
    booster = xgb.train(
        {"objective": "multi:softprob", "num_class": 3},
        xgb.DMatrix(IRIS_X, label=IRIS_Y, feature_names=names),
        num_boost_round=3,
    )
    model = load(tmp_path / "v", "model.json", lambda p: booster.save_model(str(p)))
    assert model.feature_names == names
    np.testing.assert_allclose(
        model.runtime.predict(IRIS_X),
        booster.predict(xgb.DMatrix(IRIS_X, feature_names=names)),
        rtol=1e-6,
    )


# -- scikit-learn ------------------------------------------------------------------------


def skops_dump(estimator: Any) -> Saver:
    return lambda p: sio.dump(estimator, p)


SKLEARN_CLASSIFIERS = {
    "random_forest": (RandomForestClassifier(n_estimators=10, random_state=0), IRIS_X, IRIS_Y),
    "logistic": (LogisticRegression(max_iter=1000), IRIS_X, IRIS_Y),
    "pipeline": (make_pipeline(StandardScaler(), LogisticRegression()), CANCER_X, CANCER_Y),
}


@pytest.mark.parametrize("name", sorted(SKLEARN_CLASSIFIERS))
def test_sklearn_classifiers_via_skops(tmp_path: Path, name: str) -> None:
    estimator, x, y = SKLEARN_CLASSIFIERS[name]
    estimator.fit(x, y)
    model = load(
        tmp_path / name, "model.skops", skops_dump(estimator), features=features(x.shape[1])
    )
    assert model.flavor == "sklearn" and model.task == "classification"
    assert model.classes == sorted(set(y.tolist()))
    out = model.runtime.predict(x)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, estimator.predict_proba(x), rtol=1e-12)


def test_sklearn_string_labels(tmp_path: Path) -> None:
    labels = np.array(["setosa", "versicolor", "virginica"])[IRIS_Y]
    estimator = LogisticRegression(max_iter=1000).fit(IRIS_X, labels)
    model = load(tmp_path / "v", "model.skops", skops_dump(estimator), features=features(4))
    assert model.classes == ["setosa", "versicolor", "virginica"]
    assert all(type(c) is str for c in model.classes)
    np.testing.assert_allclose(model.runtime.predict(IRIS_X), estimator.predict_proba(IRIS_X))


def test_sklearn_regressor_via_skops(tmp_path: Path) -> None:
    estimator = GradientBoostingRegressor(n_estimators=20, random_state=0)
    estimator.fit(DIABETES_X, DIABETES_Y)
    model = load(tmp_path / "v", "model.skops", skops_dump(estimator), features=features(10))
    assert model.task == "regression" and model.classes is None
    out = model.runtime.predict(DIABETES_X)
    assert out.shape == (len(DIABETES_X),)
    np.testing.assert_allclose(out, estimator.predict(DIABETES_X), rtol=1e-12)


def test_sklearn_fitted_on_a_dataframe_warns_nothing(tmp_path: Path) -> None:
    frame = load_iris(as_frame=True)
    estimator = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame.data, frame.target)
    assert hasattr(estimator, "feature_names_in_")
    model = load(tmp_path / "v", "model.skops", skops_dump(estimator))  # features from the artifact
    assert model.feature_names == list(frame.data.columns)
    x = frame.data.to_numpy(dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.runtime.predict(x)
    np.testing.assert_allclose(out, estimator.predict_proba(frame.data), rtol=1e-12)


def test_sklearn_dataframe_names_must_match_the_manifest(tmp_path: Path) -> None:
    frame = load_iris(as_frame=True)
    estimator = LogisticRegression(max_iter=1000).fit(frame.data, frame.target)
    with pytest.raises(ManifestError, match="features"):
        load(tmp_path / "v", "model.skops", skops_dump(estimator), features=features(4))


def test_sklearn_feature_count_must_match_the_manifest(tmp_path: Path) -> None:
    estimator = LogisticRegression(max_iter=1000).fit(IRIS_X, IRIS_Y)
    with pytest.raises(ManifestError, match="5 listed"):
        load(tmp_path / "v", "model.skops", skops_dump(estimator), features=features(5))


def pickle_dump(estimator: Any) -> Saver:
    def save(path: Path) -> None:
        with path.open("wb") as fh:
            pickle.dump(estimator, fh)

    return save


@pytest.mark.parametrize("ext", ["joblib", "pkl"])
def test_pickles_are_refused_unless_trusted(tmp_path: Path, ext: str) -> None:
    estimator = LogisticRegression(max_iter=1000).fit(IRIS_X, IRIS_Y)
    save = (lambda p: joblib.dump(estimator, p)) if ext == "joblib" else pickle_dump(estimator)
    with pytest.raises(ModelLoadError, match="trusted"):
        load(tmp_path / "untrusted", f"model.{ext}", save, features=features(4))
    model = load(tmp_path / "trusted", f"model.{ext}", save, features=features(4), trusted=True)
    assert model.flavor == "sklearn"
    np.testing.assert_allclose(model.runtime.predict(IRIS_X), estimator.predict_proba(IRIS_X))


class Doubler(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """A custom type: not from scikit-learn, numpy or scipy."""

    def fit(self, x: Any, y: Any = None) -> Doubler:
        return self

    def transform(self, x: Any) -> Any:
        return np.asarray(x) * 2


def test_skops_with_a_custom_type_is_refused_unless_trusted(tmp_path: Path) -> None:
    estimator = Pipeline([("double", Doubler()), ("lr", LogisticRegression(max_iter=1000))])
    estimator.fit(IRIS_X, IRIS_Y)
    with pytest.raises(ModelLoadError) as info:
        load(tmp_path / "untrusted", "model.skops", skops_dump(estimator), features=features(4))
    assert "Doubler" in info.value.message and "trusted" in info.value.message
    model = load(
        tmp_path / "trusted",
        "model.skops",
        skops_dump(estimator),
        features=features(4),
        trusted=True,
    )
    np.testing.assert_allclose(model.runtime.predict(IRIS_X), estimator.predict_proba(IRIS_X))


def test_skops_with_stored_functions_is_refused_unless_trusted(tmp_path: Path) -> None:
    # Stored functions run at predict time: this file would exec a string it carries.
    marker = tmp_path / "ran"
    evil = Pipeline(
        [
            (
                "fill",
                FunctionTransformer(
                    np.full_like,
                    kw_args={"fill_value": f"open({str(marker)!r}, 'w').close()", "dtype": object},
                ),
            ),
            ("flat", FunctionTransformer(np.ravel)),
            ("one", FunctionTransformer(builtins.max)),
            ("run", FunctionTransformer(builtins.exec)),
            ("lr", LogisticRegression(max_iter=1000).fit(IRIS_X, IRIS_Y)),
        ]
    )
    with pytest.raises(ModelLoadError) as info:
        load(tmp_path / "v", "model.skops", skops_dump(evil), features=features(4))
    assert "builtins.exec" in info.value.message and "numpy.full_like" in info.value.message
    assert "sklearn.pipeline.Pipeline" not in info.value.message
    assert not marker.exists()


def test_skops_with_a_numpy_function_loads_when_trusted(tmp_path: Path) -> None:
    estimator = make_pipeline(FunctionTransformer(np.sort), LogisticRegression(max_iter=1000))
    estimator.fit(IRIS_X, IRIS_Y)
    with pytest.raises(ModelLoadError, match=r"numpy\.sort"):
        load(tmp_path / "untrusted", "model.skops", skops_dump(estimator), features=features(4))
    model = load(
        tmp_path / "trusted",
        "model.skops",
        skops_dump(estimator),
        features=features(4),
        trusted=True,
    )
    np.testing.assert_allclose(model.runtime.predict(IRIS_X), estimator.predict_proba(IRIS_X))


def test_a_corrupt_skops_file_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.skops"):
        load(
            tmp_path / "v",
            "model.skops",
            lambda p: p.write_bytes(b"not a zip"),
            features=features(4),
        )


# -- ONNX --------------------------------------------------------------------------------

F32 = {"rtol": 1e-5, "atol": 1e-6}
LABELS = {
    "ints": np.array([10, 20, 30]),
    "strings": np.array(["setosa", "versicolor", "virginica"]),
}


def onnx_save(estimator: Any, x: np.ndarray, options: Any = None) -> Saver:
    proto = to_onnx(estimator, x[:1].astype(np.float32), options=options, target_opset=17)
    return lambda p: p.write_bytes(proto.SerializeToString())


@pytest.mark.parametrize("labels", sorted(LABELS))
@pytest.mark.parametrize("zipmap", [True, False])
def test_onnx_classifier(tmp_path: Path, zipmap: bool, labels: str) -> None:
    y = LABELS[labels][IRIS_Y]
    estimator = LogisticRegression(max_iter=1000).fit(IRIS_X, y)
    options = None if zipmap else {id(estimator): {"zipmap": False}}
    model = load(
        tmp_path / "v", "model.onnx", onnx_save(estimator, IRIS_X, options), features=features(4)
    )
    assert model.flavor == "onnx" and model.task == "classification"
    assert model.classes == LABELS[labels].tolist()
    x32 = IRIS_X.astype(np.float32)
    out = model.runtime.predict(IRIS_X)
    assert out.shape == (150, 3) and out.dtype == np.float64
    np.testing.assert_allclose(out, estimator.predict_proba(x32.astype(np.float64)), **F32)
    # The same as onnxruntime itself gives, in the model's class order.
    session = ort.InferenceSession(
        str(tmp_path / "v" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    _, probs = session.run(None, {session.get_inputs()[0].name: x32})
    if zipmap:
        probs = [[row[c] for c in estimator.classes_.tolist()] for row in probs]
    np.testing.assert_allclose(out, np.asarray(probs, dtype=np.float64), rtol=1e-7)


def test_onnx_binary_random_forest_without_zipmap(tmp_path: Path) -> None:
    estimator = RandomForestClassifier(n_estimators=10, random_state=0).fit(CANCER_X, CANCER_Y)
    options = {id(estimator): {"zipmap": False}}
    model = load(
        tmp_path / "v", "model.onnx", onnx_save(estimator, CANCER_X, options), features=features(30)
    )
    assert model.classes == [0, 1]
    x32 = CANCER_X.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(model.runtime.predict(CANCER_X), estimator.predict_proba(x32), **F32)


def test_onnx_regressor(tmp_path: Path) -> None:
    estimator = LinearRegression().fit(DIABETES_X, DIABETES_Y)
    model = load(
        tmp_path / "v", "model.onnx", onnx_save(estimator, DIABETES_X), features=features(10)
    )
    assert model.task == "regression" and model.classes is None
    out = model.runtime.predict(DIABETES_X)
    assert out.shape == (len(DIABETES_X),)
    expected = estimator.predict(DIABETES_X.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(out, expected, **F32)


def test_onnx_feature_count_must_match_the_manifest(tmp_path: Path) -> None:
    estimator = LinearRegression().fit(DIABETES_X, DIABETES_Y)
    with pytest.raises(ManifestError, match="9 listed"):
        load(tmp_path / "v", "model.onnx", onnx_save(estimator, DIABETES_X), features=features(9))


def test_a_corrupt_onnx_file_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.onnx"):
        load(
            tmp_path / "v",
            "model.onnx",
            lambda p: p.write_bytes(b"\x00garbage"),
            features=features(4),
        )


# -- the registry ---------------------------------------------------------------------


class ConstantRuntime(Runtime):
    """A plugin's runtime: every row scores 0.5."""

    flavor = "constant"
    extensions = (".const",)

    def __init__(self, artifact: Path, manifest: Manifest, threads: int = 1) -> None:
        super().__init__(artifact, manifest, threads)
        self.task = "regression"
        self.feature_names = ["a", "b"]

    @property
    def native(self) -> Any:
        return None

    def predict(self, x: Matrix) -> Matrix:
        return np.full(len(x), 0.5)


class ReplacedOnnx(ConstantRuntime):
    flavor = "onnx"
    extensions = (".onnx",)


def test_built_in_flavors_load_by_name() -> None:
    assert {"onnx", "sklearn", "xgboost"} <= set(flavors())
    assert get_runtime("xgboost") is XGBoostRuntime
    assert infer_flavor(Path("model.ubj")) == "xgboost"
    assert infer_flavor(Path("model.SKOPS")) == "sklearn"


def test_an_unknown_flavor_names_the_known_ones() -> None:
    with pytest.raises(ManifestError, match=r"unknown flavor 'tensorflow'; known: \[.*'xgboost'"):
        get_runtime("tensorflow")
    with pytest.raises(ManifestError, match=r"cannot infer the flavor of model\.bin"):
        infer_flavor(Path("model.bin"))


def check_plugin_runtimes(folder: str) -> None:
    """In a process where the plugin distribution is installed: a new flavor serves, and
    the plugin's onnx replaces the built-in one."""
    assert "constant" in flavors()
    assert get_runtime("onnx") is ReplacedOnnx  # a plugin may replace a built-in
    assert infer_flavor(Path("m.const")) == "constant"
    model = load(Path(folder) / "v", "m.const", lambda p: p.write_text("0.5"))
    assert model.flavor == "constant" and model.feature_names == ["a", "b"]
    np.testing.assert_array_equal(model.runtime.predict(np.zeros((3, 2))), [0.5, 0.5, 0.5])


def test_a_plugin_runtime_from_an_entry_point_serves(tmp_path: Path) -> None:
    """An installed distribution's ``xserve.runtimes`` entry points: one new flavor, and
    one that replaces the built-in onnx."""
    site = install_plugin(
        tmp_path / "site",
        {
            "xserve.runtimes": {
                "constant": f"{__name__}:ConstantRuntime",
                "onnx": f"{__name__}:ReplacedOnnx",
            }
        },
    )
    run_with_plugin(site, f"{__name__}:check_plugin_runtimes", str(tmp_path / "models"))
