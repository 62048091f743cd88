"""ONNX tree ensembles are explained by exact interventional Shapley values over the whole
background (xserve.explainers.onnx_trees).

Every attribution is checked against brute force: ``v(S)`` is the mean, over the reference
rows ``b``, of the model's output on the row that takes ``x`` on ``S`` and ``b`` elsewhere,
computed by onnxruntime itself; the Shapley values come from enumerating every ``S``. They
must agree to 1e-5 of the output scale, in the space the explainer serves (probability,
log-odds or value), on rows that sit exactly on split thresholds and one float32 step
either side of them, with such rows in the background too.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import helper
from skl2onnx import to_onnx
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
)

from tests.explainers.test_onnx_tree_shap import brute_force, f32, write_version
from tests.server import DEMO_MODELS
from xserve.errors import ManifestError
from xserve.explainers.attach import attach_inline
from xserve.explainers.describe import describe_version
from xserve.explainers.onnx_trees import OnnxTreeShap
from xserve.repository.manifest import BACKGROUND_ROWS_CAP, load_manifest
from xserve.repository.version import ModelVersion, load_version

Outputs = Callable[[np.ndarray], np.ndarray]


def splits(onx: onnx.ModelProto) -> list[tuple[int, np.float32]]:
    """(feature, threshold) of every split node of the graph's tree ensemble."""
    (node,) = [n for n in onx.graph.node if n.op_type.startswith("TreeEnsemble")]
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    return [
        (int(f), np.float32(t))
        for f, t, m in zip(a["nodes_featureids"], a["nodes_values"], a["nodes_modes"], strict=True)
        if m != b"LEAF"
    ]


def on_thresholds(onx: onnx.ModelProto, rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """For ``count`` random splits: a row with the split's feature exactly on its threshold,
    one a float32 step below and one a float32 step above."""
    rng = np.random.default_rng(seed)
    chosen = splits(onx)
    out = []
    for i in rng.choice(len(chosen), count, replace=False):
        feature, t = chosen[i]
        for value in (t, np.nextafter(t, np.float32(-np.inf)), np.nextafter(t, np.float32(np.inf))):
            row = rows[rng.integers(len(rows))].copy()
            row[feature] = value
            out.append(row)
    return np.asarray(out)


def ort_outputs(onx: onnx.ModelProto) -> Outputs:
    """onnxruntime's probabilities or values, as float64 (rows, outputs)."""
    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    last = len(session.get_outputs()) - 1

    def run(x: np.ndarray) -> np.ndarray:
        out = session.run(None, {name: x.astype(np.float32)})[last]
        return np.asarray(out, dtype=np.float64).reshape(len(x), -1)

    return run


def served(model: ModelVersion) -> Outputs:
    """The version's own predictions (its onnxruntime session, ZipMap read), as float64."""
    return lambda x: np.asarray(model.runtime.predict(x), dtype=np.float64).reshape(len(x), -1)


def ort_log_odds(onx: onnx.ModelProto) -> Outputs:
    """A binary classifier's log-odds of both classes, ``[-s, s]``, from onnxruntime: the
    classifier node rewritten as a regressor over the same trees, weights and base value,
    without the LOGISTIC transform (skl2onnx's binary boosting scores class 0's trees as
    class 1's log-odds)."""
    (node,) = [n for n in onx.graph.node if n.op_type == "TreeEnsembleClassifier"]
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    assert a["post_transform"] == b"LOGISTIC" and set(a["class_ids"]) == {0}
    attrs = {k: v for k, v in a.items() if k.startswith("nodes_")}
    attrs |= {
        "target_ids": a["class_ids"],
        "target_nodeids": a["class_nodeids"],
        "target_treeids": a["class_treeids"],
        "target_weights": a["class_weights"],
        "base_values": a["base_values"],
        "n_targets": 1,
        "aggregate_function": "SUM",
    }
    regressor = helper.make_node(
        "TreeEnsembleRegressor", [node.input[0]], ["s"], domain="ai.onnx.ml", **attrs
    )
    graph = helper.make_graph(
        [regressor],
        "log_odds",
        [onx.graph.input[0]],
        [helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [None, 1])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    score = ort_outputs(helper.make_model(graph, opset_imports=opsets))
    return lambda x: np.hstack([-score(x), score(x)])


def assert_exact(model: ModelVersion, f: Outputs, rows: np.ndarray) -> None:
    """Base values and attributions equal brute-force interventional Shapley values."""
    explainer = model.inline
    assert isinstance(explainer, OnnxTreeShap)
    reference = explainer.reference
    attribution = explainer.explain(rows)
    scale = max(1.0, float(np.abs(f(rows)).max()), float(np.abs(f(reference)).max()))
    mean = f(reference).mean(axis=0)
    np.testing.assert_allclose(attribution.base, np.tile(mean, (len(rows), 1)), atol=1e-5 * scale)
    for r, row in enumerate(rows):
        exact = brute_force(f, row, reference)
        np.testing.assert_allclose(attribution.values[r], exact, rtol=0, atol=1e-5 * scale)
    # And they add up to the model's own output, threshold rows included.
    total = attribution.base + attribution.values.sum(axis=1)
    np.testing.assert_allclose(total, f(rows), rtol=0, atol=1e-5 * scale)


def test_iris_demo_whole_background_exact(tmp_path: Path) -> None:
    """The demo iris forest: probability space, all 150 background rows, base 1/3 each."""
    folder = tmp_path / "1"
    shutil.copytree(DEMO_MODELS / "iris" / "1", folder)
    model = attach_inline(load_version("iris", "1", folder))
    explainer = model.inline
    assert isinstance(explainer, OnnxTreeShap) and explainer.output == "probability"
    assert model.background is not None
    assert (explainer.background_use.rows, explainer.background_use.of) == (150, 150)
    np.testing.assert_array_equal(explainer.reference, f32(model.background))
    # The background's mean output: 0.333/0.333/0.334, not a 100-row sample's.
    np.testing.assert_allclose(explainer.base, [0.3329, 0.3328, 0.3343], atol=1e-4)
    onx = onnx.load(folder / "model.onnx")
    rows = np.vstack([on_thresholds(onx, f32(model.background), 6, 0), model.background[::30]])
    assert_exact(model, served(model), rows)
    explain = describe_version(model)["explain"]
    assert explain["inline_background"] == {
        "rows": 150,
        "of": 150,
        "cap": BACKGROUND_ROWS_CAP,
        "sample": "all",
    }


@pytest.mark.parametrize("kind", ["boosting-log-odds", "forest-probability"])
def test_binary_classifier_exact(tmp_path: Path, kind: str) -> None:
    X, y = make_classification(400, 5, n_informative=4, n_redundant=0, random_state=3)
    X = f32(X)
    if kind == "boosting-log-odds":
        estimator = GradientBoostingClassifier(n_estimators=25, max_depth=3, random_state=0)
    else:
        estimator = RandomForestClassifier(n_estimators=15, max_depth=5, random_state=0)
    estimator.fit(X, y)
    onx = to_onnx(estimator, X[:1].astype(np.float32), options={id(estimator): {"zipmap": False}})
    # Background rows on thresholds too: their side of each split decides the game.
    background = np.vstack([X[:60], on_thresholds(onx, X, 4, 1)])
    model = write_version(tmp_path / "1", onx, background, [f"f{i}" for i in range(5)])
    assert isinstance(model.inline, OnnxTreeShap)
    rows = np.vstack([on_thresholds(onx, X[200:], 5, 2), X[300:303]])
    if kind == "boosting-log-odds":
        assert model.inline.output == "margin"
        assert_exact(model, ort_log_odds(onx), rows)
    else:
        assert model.inline.output == "probability"
        assert_exact(model, ort_outputs(onx), rows)


def test_multiclass_boosting_exact_in_margin(tmp_path: Path) -> None:
    """Softmax boosting: the per-class raw scores, against onnxruntime running the same
    graph without its SOFTMAX post-transform."""
    X, y = make_classification(
        400, 4, n_informative=3, n_redundant=0, n_classes=3, n_clusters_per_class=1, random_state=5
    )
    X = f32(X)
    estimator = GradientBoostingClassifier(n_estimators=10, max_depth=3, random_state=0)
    onx = to_onnx(
        estimator.fit(X, y), X[:1].astype(np.float32), options={id(estimator): {"zipmap": False}}
    )
    raw = onnx.ModelProto()
    raw.CopyFrom(onx)
    (node,) = [n for n in raw.graph.node if n.op_type == "TreeEnsembleClassifier"]
    (post,) = [a for a in node.attribute if a.name == "post_transform"]
    assert post.s == b"SOFTMAX"
    post.s = b"NONE"
    background = np.vstack([X[:50], on_thresholds(onx, X, 4, 9)])
    model = write_version(tmp_path / "1", onx, background, [f"f{i}" for i in range(4)])
    assert isinstance(model.inline, OnnxTreeShap) and model.inline.output == "margin"
    rows = np.vstack([on_thresholds(onx, X[200:], 5, 10), X[300:302]])
    assert_exact(model, ort_outputs(raw), rows)


def test_regressor_exact(tmp_path: Path) -> None:
    X, y = make_regression(300, 5, n_informative=5, noise=5.0, random_state=4)
    X = f32(X)
    estimator = GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0)
    onx = to_onnx(estimator.fit(X, y), X[:1].astype(np.float32))
    background = np.vstack([X[:70], on_thresholds(onx, X, 3, 5)])
    model = write_version(tmp_path / "1", onx, background, [f"f{i}" for i in range(5)])
    assert isinstance(model.inline, OnnxTreeShap) and model.inline.output == "value"
    rows = np.vstack([on_thresholds(onx, X[100:], 5, 6), X[250:253]])
    assert_exact(model, ort_outputs(onx), rows)


def test_background_rows_caps_the_reference(tmp_path: Path) -> None:
    """explain.background_rows below the background's size: a seeded sample of that many
    rows (the same on every load), reported in the metadata, and exact against it."""
    X, y = make_regression(300, 4, noise=1.0, random_state=7)
    X = f32(X)
    estimator = GradientBoostingRegressor(n_estimators=10, max_depth=3, random_state=0)
    onx = to_onnx(estimator.fit(X, y), X[:1].astype(np.float32))
    folder = tmp_path / "1"
    write_version(folder, onx, X, [f"f{i}" for i in range(4)])
    manifest = yaml.safe_load((folder / "xserve.yaml").read_text())
    manifest["explain"] = {"background_rows": 50}
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest))
    model = attach_inline(load_version("m", "1", folder))
    again = attach_inline(load_version("m", "1", folder))
    assert isinstance(model.inline, OnnxTreeShap) and isinstance(again.inline, OnnxTreeShap)
    reference = model.inline.reference
    assert reference.shape == (50, 4)
    np.testing.assert_array_equal(reference, again.inline.reference)
    assert {tuple(r) for r in reference} <= {tuple(r) for r in X}
    assert describe_version(model)["explain"]["inline_background"] == {
        "rows": 50,
        "of": 300,
        "cap": 50,
        "sample": "random sample, seed 0",
    }
    assert_exact(model, ort_outputs(onx), on_thresholds(onx, X, 3, 8))


@pytest.mark.parametrize("value", [0, -5, 10**6, "all"])
def test_background_rows_must_be_a_bounded_count(tmp_path: Path, value: object) -> None:
    (tmp_path / "xserve.yaml").write_text(
        yaml.safe_dump({"artifact": "model.onnx", "explain": {"background_rows": value}})
    )
    with pytest.raises(ManifestError, match=r"explain\.background_rows"):
        load_manifest(tmp_path)
