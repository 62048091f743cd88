"""Exact TreeSHAP on ONNX tree ensembles read from the graph (xserve.explainers.onnx_trees)."""

from __future__ import annotations

from collections.abc import Callable
from math import factorial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import shap
import yaml
from onnx import TensorProto, helper, numpy_helper
from scipy.special import expit, softmax
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.tree import DecisionTreeClassifier

from tests.server import DEMO_MODELS
from xserve.explainers.attach import attach_inline
from xserve.explainers.build import ADDITIVITY_RTOL
from xserve.explainers.onnx_trees import OnnxTreeShap
from xserve.repository.version import ModelVersion, load_version

DATA: dict[str, Callable[..., Any]] = {
    "iris": load_iris,
    "cancer": load_breast_cancer,
    "diabetes": load_diabetes,
}


def write_version(
    root: Path, onx: onnx.ModelProto, background: np.ndarray | None, names: list[str]
) -> ModelVersion:
    """A version folder (model.onnx, background.csv, xserve.yaml), loaded."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(onx.SerializeToString())
    manifest: dict[str, Any] = {
        "flavor": "onnx",
        "artifact": "model.onnx",
        "features": [{"name": n, "type": "numeric"} for n in names],
    }
    if background is not None:
        pd.DataFrame(background, columns=names).to_csv(root / "background.csv", index=False)
        manifest["background"] = "background.csv"
    (root / "xserve.yaml").write_text(yaml.safe_dump(manifest))
    return attach_inline(load_version("m", "1", root))


def assert_adds_up(model: ModelVersion, x: np.ndarray) -> None:
    explainer = model.inline
    assert explainer is not None
    attribution = explainer.explain(x)
    expected = explainer.model_output(x)
    assert attribution.values.shape == (len(x), x.shape[1], expected.shape[1])
    assert attribution.base.shape == expected.shape
    total = attribution.base + attribution.values.sum(axis=1)
    scale = np.maximum(np.abs(expected), 1.0)
    assert np.max(np.abs(total - expected) / scale) <= ADDITIVITY_RTOL


def f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)


def floor32(t: np.ndarray) -> np.ndarray:
    """The largest float32 <= t: the same split as t for float32 inputs."""
    t32 = t.astype(np.float32)
    return np.where(t32 > t, np.nextafter(t32, np.float32(-np.inf)), t32).astype(np.float64)


def shap_reference(
    estimator: Any, background: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """shap's interventional TreeExplainer of the sklearn model: (values, expected value).

    shap's interventional C code keeps thresholds as C floats, so sklearn's float64 midpoints
    get rounded to the nearest float32, sometimes onto a data value, which flips that split.
    Flooring them to float32 first keeps every split as sklearn (float32 inputs) makes it.
    """
    ref = shap.TreeExplainer(estimator, data=f32(background), feature_perturbation="interventional")
    ref.model.thresholds = floor32(ref.model.thresholds)
    values = np.asarray(ref.shap_values(x, check_additivity=False), dtype=np.float64)
    return values, np.atleast_1d(np.asarray(ref.expected_value, dtype=np.float64))


def brute_force(
    f: Callable[[np.ndarray], np.ndarray], row: np.ndarray, background: np.ndarray
) -> np.ndarray:
    """Exact interventional Shapley values (features, outputs) by enumerating coalitions."""
    m = len(row)
    masks = ((np.arange(2**m)[:, None] >> np.arange(m)) & 1).astype(bool)
    hybrid = np.repeat(background[None], len(masks), axis=0)
    for s, mask in enumerate(masks):
        hybrid[s][:, mask] = row[mask]
    mean = f(hybrid.reshape(-1, m)).reshape(len(masks), len(background), -1).mean(axis=1)
    phi = np.zeros((m, mean.shape[1]))
    for s, mask in enumerate(masks):
        k = int(mask.sum())
        for i in np.flatnonzero(~mask):
            weight = factorial(k) * factorial(m - k - 1) / factorial(m)
            phi[i] += weight * (mean[s | (1 << i)] - mean[s])
    return phi


# id, estimator, data set, skl2onnx options, our output space, the reference: shap's sklearn
# explainer with every output ("all") or one log-odds output for class 1 ("positive"), or
# brute-force Shapley values of the sklearn model ("brute").
CASES = [
    (
        "rf-binary",
        RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0),
        "cancer",
        None,
        "probability",
        "all",
    ),
    (
        "rf-binary-nozipmap",
        RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0),
        "cancer",
        {"zipmap": False},
        "probability",
        "all",
    ),
    (
        "rf-multiclass",
        RandomForestClassifier(n_estimators=20, max_depth=5, random_state=1),
        "iris",
        None,
        "probability",
        "all",
    ),
    (
        "rf-multiclass-nozipmap",
        RandomForestClassifier(n_estimators=20, max_depth=5, random_state=1),
        "iris",
        {"zipmap": False},
        "probability",
        "all",
    ),
    (
        "extra-trees-regressor",
        ExtraTreesRegressor(n_estimators=20, max_depth=6, random_state=0),
        "diabetes",
        None,
        "value",
        "all",
    ),
    (
        "rf-regressor",
        RandomForestRegressor(n_estimators=20, max_depth=6, random_state=0),
        "diabetes",
        None,
        "value",
        "all",
    ),
    (
        "gb-binary",
        GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0),
        "cancer",
        None,
        "margin",
        "positive",
    ),
    (
        "gb-multiclass",
        GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0),
        "iris",
        {"zipmap": False},
        "margin",
        "brute",
    ),
    (
        "gb-regressor",
        GradientBoostingRegressor(n_estimators=40, max_depth=3, random_state=0),
        "diabetes",
        None,
        "value",
        "all",
    ),
    (
        "decision-tree",
        DecisionTreeClassifier(max_depth=6, random_state=0),
        "cancer",
        None,
        "probability",
        "all",
    ),
]


@pytest.mark.parametrize(
    ("estimator", "dataset", "options", "space", "reference"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_sklearn_ensembles_through_onnx(
    tmp_path: Path,
    estimator: Any,
    dataset: str,
    options: dict[str, Any] | None,
    space: str,
    reference: str,
) -> None:
    bunch = DATA[dataset]()
    X, y = np.asarray(bunch.data, dtype=np.float64), bunch.target
    names = [f"f{i}" for i in range(X.shape[1])]
    estimator.fit(X, y)
    onx = to_onnx(
        estimator, X[:1].astype(np.float32), options={id(estimator): options} if options else None
    )
    rng = np.random.default_rng(0)
    background = X[rng.choice(len(X), 60, replace=False)]
    model = write_version(tmp_path / "1", onx, background, names)

    assert isinstance(model.inline, OnnxTreeShap)
    assert model.inline_error is None
    assert model.inline.output == space

    x = f32(X[rng.choice(len(X), 50, replace=False)])
    assert_adds_up(model, x)

    ours = model.inline.explain(x)
    scale = max(1.0, float(np.abs(model.inline.model_output(x)).max()))
    if reference == "brute":  # shap has no sklearn multiclass gradient boosting
        for r in range(5):
            exact = brute_force(estimator.decision_function, x[r], f32(background))
            np.testing.assert_allclose(ours.values[r], exact, rtol=0, atol=1e-5 * scale)
    else:  # the same attributions as shap's explainer of the sklearn model
        ref_values, ref_base = shap_reference(estimator, background, x)
        if reference == "positive":  # shap: one log-odds output; ours: both classes' log-odds
            ref_values = np.stack([-ref_values, ref_values], axis=-1)
            ref_base = np.array([-ref_base[0], ref_base[0]])
        ref_values = ref_values.reshape(ours.values.shape)
        np.testing.assert_allclose(ours.values, ref_values, rtol=0, atol=1e-5 * scale)
        ref_base = np.tile(ref_base, (len(x), 1))
        np.testing.assert_allclose(ours.base, ref_base, rtol=0, atol=1e-5 * scale)

    if space == "margin":  # the raw scores are the ones onnxruntime turns into probabilities
        margin = model.inline.model_output(x)
        proba = model.runtime.predict(x)
        transformed = expit(margin) if reference == "positive" else softmax(margin, axis=1)
        np.testing.assert_allclose(transformed, proba, rtol=0, atol=1e-6)
        if reference == "positive":
            np.testing.assert_allclose(margin[:, 1], estimator.decision_function(x), atol=1e-5)


def test_double_thresholds_are_exact(tmp_path: Path) -> None:
    """Double input and double thresholds (nodes_values_as_tensor): no float32 anywhere."""
    X, y = load_diabetes(return_X_y=True)
    rf = RandomForestRegressor(n_estimators=10, max_depth=5, random_state=0).fit(X, y)
    onx = to_onnx(rf, X[:1])
    node = onx.graph.node[0]
    doubles = {  # sklearn's own float64 thresholds (nodes are exported in sklearn's order)
        "nodes_values": np.concatenate([e.tree_.threshold for e in rf.estimators_]),
        "target_weights": None,
    }
    for attr in [a for a in node.attribute if a.name in doubles]:
        data = doubles[attr.name]
        if data is None:
            data = np.array(attr.floats, dtype=np.float64)
        node.attribute.remove(attr)
        tensor = numpy_helper.from_array(data.astype(np.float64))
        node.attribute.append(helper.make_attribute(attr.name + "_as_tensor", tensor))
    assert not np.array_equal(f32(doubles["nodes_values"]), doubles["nodes_values"])
    for opset in onx.opset_import:  # *_as_tensor attributes need ai.onnx.ml 3
        if opset.domain == "ai.onnx.ml":
            opset.version = 3
    onx.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT  # as in version 3
    model = write_version(tmp_path / "1", onx, X[:40], [f"f{i}" for i in range(X.shape[1])])
    assert isinstance(model.inline, OnnxTreeShap)
    assert model.inline.ensemble.dtype is np.float64
    x = X[100:150]
    assert_adds_up(model, x)
    ours = model.inline.explain(x[:3]).values
    scale = float(np.abs(model.inline.model_output(x)).max())
    for r in range(3):  # shap would be off by up to ~1 here if given the double thresholds
        exact = brute_force(lambda z: model.runtime.predict(z)[:, None], x[r], X[:40])
        np.testing.assert_allclose(ours[r], exact, rtol=0, atol=1e-5 * scale)


def test_demo_iris_model_gets_onnx_tree_shap() -> None:
    model = attach_inline(load_version("iris", "1", DEMO_MODELS / "iris" / "1"))
    assert isinstance(model.inline, OnnxTreeShap)
    assert model.inline_error is None
    assert model.inline.output == "probability"
    assert model.background is not None
    attribution = model.inline.explain(model.background[:20])
    assert attribution.values.shape == (20, 4, 3)
    np.testing.assert_allclose(attribution.base.sum(axis=1), 1.0, atol=1e-5)
    assert_adds_up(model, model.background)


# Hand-written graphs: what skl2onnx never emits, checked against onnxruntime itself.


def stumps(
    op: str, modes: tuple[str, str], ids: list[int], weights: list[float], **extra: Any
) -> onnx.ModelProto:
    """Two one-split trees, on feature 0 at 0.5 and feature 1 at 1.0; `ids` per leaf."""
    prefix = "class_" if op == "TreeEnsembleClassifier" else "target_"
    leaf_t = [t for t in (0, 1) for _ in (1, 2) for _ in ids]
    leaf_n = [n for _ in (0, 1) for n in (1, 2) for _ in ids]
    attrs: dict[str, Any] = {
        "nodes_treeids": [0, 0, 0, 1, 1, 1],
        "nodes_nodeids": [0, 1, 2, 0, 1, 2],
        "nodes_featureids": [0, 0, 0, 1, 0, 0],
        "nodes_values": [0.5, 0, 0, 1.0, 0, 0],
        "nodes_modes": [modes[0], "LEAF", "LEAF", modes[1], "LEAF", "LEAF"],
        "nodes_truenodeids": [1, 0, 0, 1, 0, 0],
        "nodes_falsenodeids": [2, 0, 0, 2, 0, 0],
        "nodes_missing_value_tracks_true": [1, 0, 0, 0, 0, 0],
        prefix + "treeids": leaf_t,
        prefix + "nodeids": leaf_n,
        prefix + "ids": ids * 4,
        prefix + "weights": weights,
        **extra,
    }
    if op == "TreeEnsembleClassifier":
        n_out, outputs = len(attrs["classlabels_int64s"]), ["label", "probabilities"]
        out_info = [helper.make_tensor_value_info("label", TensorProto.INT64, [None])]
    else:
        n_out, outputs, out_info = 1, ["variable"], []
    out_info.append(helper.make_tensor_value_info(outputs[-1], TensorProto.FLOAT, [None, n_out]))
    node = helper.make_node(op, ["X"], outputs, domain="ai.onnx.ml", **attrs)
    x_info = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([node], "stumps", [x_info], out_info)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    return helper.make_model(graph, opset_imports=opsets)


def edge_rows() -> np.ndarray:
    """Rows on, just below and just above both thresholds, plus a missing value."""
    x = np.random.default_rng(1).uniform(-1.0, 3.0, (60, 2))
    for col, t in ((0, 0.5), (1, 1.0)):
        below = np.nextafter(np.float32(t), np.float32(-np.inf))
        above = np.nextafter(np.float32(t), np.float32(np.inf))
        x[col * 15 : col * 15 + 15, col] = np.repeat([t, below, above], 5)
    x[59, 0] = np.nan
    return x


@pytest.mark.parametrize(
    "modes",
    [("BRANCH_LEQ", "BRANCH_LT"), ("BRANCH_GTE", "BRANCH_GT"), ("BRANCH_LT", "BRANCH_GT")],
)
def test_split_modes_follow_onnxruntime(tmp_path: Path, modes: tuple[str, str]) -> None:
    onx = stumps(
        "TreeEnsembleRegressor",
        modes,
        [0],
        [1.0, 2.0, 4.0, 8.0],
        n_targets=1,
        aggregate_function="AVERAGE",
        base_values=[10.0],
    )
    model = write_version(tmp_path / "1", onx, edge_rows()[:40], ["a", "b"])
    assert isinstance(model.inline, OnnxTreeShap)
    x = edge_rows()
    session = ort.InferenceSession(onx.SerializeToString())
    (direct,) = session.run(None, {"X": x.astype(np.float32)})
    np.testing.assert_allclose(model.inline.raw(x)[:, 0], direct[:, 0], rtol=1e-7)
    assert len(np.unique(direct)) == 4  # every leaf pair is reached
    assert_adds_up(model, x)
    # Exact interventional values on the rows on, below and above each threshold, against
    # brute force over onnxruntime itself (the background holds such rows too).
    attribution = model.inline.explain(x)
    background = edge_rows()[:40]

    def run(z: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {"X": z.astype(np.float32)})[0], dtype=np.float64)

    for r in range(0, 59):
        exact = brute_force(run, x[r], background)
        np.testing.assert_allclose(attribution.values[r], exact, rtol=0, atol=1e-5 * 10)


@pytest.mark.parametrize(
    ("ids", "mixed", "extra", "space"),
    [
        pytest.param([0], False, {}, "probability", id="class0-only-nonnegative"),
        pytest.param([0], True, {"base_values": [0.1]}, "probability", id="class0-only-mixed"),
        pytest.param(
            [0, 1], False, {"base_values": [0.25, 0.5]}, "probability", id="both-with-2-bases"
        ),
        pytest.param([1], False, {"base_values": [0.3]}, "probability", id="class1-only"),
        pytest.param(
            [0],
            False,
            {"post_transform": "LOGISTIC", "base_values": [-0.2]},
            "margin",
            id="class0-only-logistic",
        ),
        pytest.param([0, 1], True, {"post_transform": "SOFTMAX"}, "margin", id="both-softmax"),
    ],
)
def test_binary_encodings_follow_onnxruntime(
    tmp_path: Path, ids: list[int], mixed: bool, extra: dict[str, Any], space: str
) -> None:
    """onnxruntime's two-class rules: which classes carry weights, base values, signs."""
    weights = np.array([0.1, 0.2, 0.15, 0.3, 0.05, 0.25, 0.2, 0.1][: 4 * len(ids)])
    if mixed:
        weights[1::2] *= -1
    onx = stumps(
        "TreeEnsembleClassifier",
        ("BRANCH_LEQ", "BRANCH_LEQ"),
        ids,
        weights.tolist(),
        classlabels_int64s=[0, 1],
        **extra,
    )
    model = write_version(tmp_path / "1", onx, edge_rows()[:40], ["a", "b"])
    assert isinstance(model.inline, OnnxTreeShap)
    assert model.inline.output == space
    x = edge_rows()
    assert_adds_up(model, x)  # in probability space, against onnxruntime's own outputs
    if space == "margin":
        margin = model.inline.model_output(x)
        out = expit(margin) if extra["post_transform"] == "LOGISTIC" else softmax(margin, axis=1)
        np.testing.assert_allclose(out, model.runtime.predict(x), rtol=0, atol=1e-6)


def test_unsupported_split_mode_is_refused_with_reason(tmp_path: Path) -> None:
    onx = stumps(
        "TreeEnsembleRegressor", ("BRANCH_LEQ", "BRANCH_EQ"), [0], [1.0, 2.0, 4.0, 8.0], n_targets=1
    )
    model = write_version(tmp_path / "1", onx, edge_rows(), ["a", "b"])
    assert model.inline is None
    assert model.inline_error is not None and "BRANCH_EQ" in model.inline_error


def test_graph_with_other_computation_is_not_supported(tmp_path: Path) -> None:
    onx = stumps(
        "TreeEnsembleRegressor",
        ("BRANCH_LEQ", "BRANCH_LEQ"),
        [0],
        [1.0, 2.0, 4.0, 8.0],
        n_targets=1,
    )
    graph = onx.graph
    graph.node[0].output[0] = "trees"  # the ensemble's output scaled before it leaves the graph
    graph.initializer.append(helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]))
    graph.node.append(helper.make_node("Mul", ["trees", "two"], ["variable"]))
    model = write_version(tmp_path / "1", onx, edge_rows(), ["a", "b"])
    assert model.inline is None
    assert model.inline_error is not None and "not available" in model.inline_error
    assert not OnnxTreeShap.supports(model)


def test_no_background_means_no_onnx_tree_shap(tmp_path: Path) -> None:
    onx = stumps(
        "TreeEnsembleRegressor",
        ("BRANCH_LEQ", "BRANCH_LEQ"),
        [0],
        [1.0, 2.0, 4.0, 8.0],
        n_targets=1,
    )
    with_background = write_version(tmp_path / "1", onx, edge_rows(), ["a", "b"])
    without = write_version(tmp_path / "2", onx, None, ["a", "b"])
    assert isinstance(with_background.inline, OnnxTreeShap)
    assert without.background is None
    assert not OnnxTreeShap.supports(without)
    assert without.inline is None and without.inline_error is not None
