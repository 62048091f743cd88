"""Inline explainers on real data: additive to the model's own output, equal to shap's.

Every model is trained here on a data set bundled with scikit-learn, written into a
version folder (artifact, ``xserve.yaml``, ``background.csv``) and loaded the way the
server loads it, with :func:`xserve.repository.version.load_version` and
:func:`xserve.explainers.attach.attach_inline`. The expected
numbers come from the native libraries and from shap, never from xserve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import shap
import skops.io as sio
import xgboost as xgb
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import expit, softmax
from sklearn import datasets, ensemble, linear_model, neighbors, tree
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from tests.server import DEMO_MODELS
from xserve.explainers.attach import attach_inline
from xserve.explainers.describe import describe_version
from xserve.repository.version import ModelVersion, load_version

RTOL = 1e-5
ROWS = 100
LOADERS: dict[str, Callable[[], Any]] = {
    "breast_cancer": datasets.load_breast_cancer,
    "diabetes": datasets.load_diabetes,
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
}


def rel_gap(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest |actual - expected| relative to max(|expected|, 1); values must agree to 1e-5."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), 1.0)))


# --- the cases


@dataclass(frozen=True)
class Case:
    id: str
    data: str
    make: Callable[[], Any] | dict[str, Any]
    """An unfitted scikit-learn estimator factory, or XGBoost training parameters."""
    method: str
    output: str
    task: str


def _xgb(objective: str, **extra: Any) -> dict[str, Any]:
    return {"objective": objective, "max_depth": 3, "eta": 0.3, "seed": 0, **extra}


CASES = [
    Case(
        "xgb-binary",
        "breast_cancer",
        _xgb("binary:logistic"),
        "tree_shap",
        "margin",
        "classification",
    ),
    Case(
        "xgb-multiclass",
        "wine",
        _xgb("multi:softprob", num_class=3),
        "tree_shap",
        "margin",
        "classification",
    ),
    Case(
        "xgb-regression", "diabetes", _xgb("reg:squarederror"), "tree_shap", "value", "regression"
    ),
    Case(
        "rf-binary",
        "breast_cancer",
        lambda: ensemble.RandomForestClassifier(40, max_depth=6, random_state=0),
        "tree_shap",
        "probability",
        "classification",
    ),
    Case(
        "rf-multiclass",
        "wine",
        lambda: ensemble.RandomForestClassifier(40, max_depth=6, random_state=0),
        "tree_shap",
        "probability",
        "classification",
    ),
    Case(
        "extratrees-regression",
        "diabetes",
        lambda: ensemble.ExtraTreesRegressor(40, max_depth=6, random_state=0),
        "tree_shap",
        "value",
        "regression",
    ),
    Case(
        "gbc-binary",
        "breast_cancer",
        lambda: ensemble.GradientBoostingClassifier(n_estimators=40, random_state=0),
        "tree_shap",
        "margin",
        "classification",
    ),
    Case(
        "gbr",
        "diabetes",
        lambda: ensemble.GradientBoostingRegressor(n_estimators=40, random_state=0),
        "tree_shap",
        "value",
        "regression",
    ),
    Case(
        "hgb-regression",
        "diabetes",
        lambda: ensemble.HistGradientBoostingRegressor(max_iter=40, random_state=0),
        "tree_shap",
        "value",
        "regression",
    ),
    Case(
        "hgb-binary",
        "breast_cancer",
        lambda: ensemble.HistGradientBoostingClassifier(max_iter=40, random_state=0),
        "tree_shap",
        "margin",
        "classification",
    ),
    Case(
        "hgb-multiclass",
        "wine",
        lambda: ensemble.HistGradientBoostingClassifier(max_iter=30, random_state=0),
        "tree_shap",
        "margin",
        "classification",
    ),
    Case(
        "decision-tree",
        "iris",
        lambda: tree.DecisionTreeClassifier(max_depth=4, random_state=0),
        "tree_shap",
        "probability",
        "classification",
    ),
    Case(
        "logreg-binary",
        "breast_cancer",
        lambda: linear_model.LogisticRegression(solver="newton-cholesky", max_iter=1000),
        "linear_shap",
        "margin",
        "classification",
    ),
    Case(
        "logreg-multiclass",
        "iris",
        lambda: linear_model.LogisticRegression(max_iter=10_000),
        "linear_shap",
        "margin",
        "classification",
    ),
    Case(
        "scaler-logreg",
        "breast_cancer",
        lambda: make_pipeline(StandardScaler(), linear_model.LogisticRegression(max_iter=10_000)),
        "linear_shap",
        "margin",
        "classification",
    ),
    Case(
        "scaler-logreg-multiclass",
        "wine",
        lambda: make_pipeline(StandardScaler(), linear_model.LogisticRegression(max_iter=10_000)),
        "linear_shap",
        "margin",
        "classification",
    ),
    Case(
        "ridge",
        "diabetes",
        lambda: linear_model.Ridge(alpha=0.5),
        "linear_shap",
        "value",
        "regression",
    ),
    Case(
        "linear-regression",
        "diabetes",
        linear_model.LinearRegression,
        "linear_shap",
        "value",
        "regression",
    ),
]
BY_ID = {c.id: c for c in CASES}


@dataclass
class Built:
    model: ModelVersion
    native: Any
    """The estimator or booster as trained here (not the one xserve loaded)."""
    x: np.ndarray
    """Rows to explain."""
    background: np.ndarray


def write_version(
    folder: Path, names: list[str], background: np.ndarray, artifact: str, manifest: dict[str, Any]
) -> Path:
    """The manifest and background.csv next to an artifact already in ``folder``."""
    pd.DataFrame(background, columns=names).to_csv(folder / "background.csv", index=False)
    full = {
        "artifact": artifact,
        "features": [{"name": n} for n in names],
        "background": "background.csv",
        **manifest,
    }
    (folder / "xserve.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    return folder


def _data(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    ds = LOADERS[name]()
    names = [str(n).replace(" ", "_") for n in ds.feature_names]
    return np.asarray(ds.data, dtype=np.float64), np.asarray(ds.target), names


def build(case: Case, root: Path, manifest: dict[str, Any] | None = None) -> Built:
    X, y, names = _data(case.data)
    rng = np.random.default_rng(7)
    background = X[rng.choice(len(X), ROWS, replace=False)]
    x = X[rng.choice(len(X), ROWS, replace=False)]
    folder = root / case.id / "1"
    folder.mkdir(parents=True)
    extra = dict(manifest or {})
    if isinstance(case.make, dict):
        native: Any = xgb.train(
            case.make, xgb.DMatrix(X, y, feature_names=names), num_boost_round=25
        )
        native.save_model(str(folder / "model.json"))
        artifact = "model.json"
        extra.setdefault("flavor", "xgboost")
    else:
        native = case.make().fit(X, y)
        sio.dump(native, folder / "model.skops")
        artifact = "model.skops"
    write_version(folder, names, background, artifact, extra)
    return Built(attach_inline(load_version(case.id, "1", folder)), native, x, background)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Built]:
    root = tmp_path_factory.mktemp("inline")
    cache: dict[str, Built] = {}

    def get(case_id: str) -> Built:
        if case_id not in cache:
            cache[case_id] = build(BY_ID[case_id], root)
        return cache[case_id]

    return get


# --- native references


def native_output(case: Case, native: Any, x: np.ndarray, output: str) -> np.ndarray:
    """The model's own output in ``output`` space, (rows, outputs), from its own library."""
    if isinstance(native, xgb.Booster):
        d = xgb.DMatrix(x, feature_names=native.feature_names)
        out = native.predict(d, output_margin=(output == "margin"))
    elif output == "probability":
        out = native.predict_proba(x)
    elif output == "margin":
        out = native.decision_function(x)
    else:
        out = native.predict(x)
    out = np.asarray(out, dtype=np.float64)
    if out.ndim == 1:
        out = np.column_stack([-out, out]) if case.task == "classification" else out[:, None]
    return out


def native_probabilities(native: Any, x: np.ndarray) -> np.ndarray:
    if isinstance(native, xgb.Booster):
        p = np.asarray(
            native.predict(xgb.DMatrix(x, feature_names=native.feature_names)), np.float64
        )
        return p if p.ndim == 2 else np.column_stack([1 - p, p])
    return np.asarray(native.predict_proba(x), dtype=np.float64)


def shap_reference(case: Case, b: Built) -> tuple[np.ndarray, np.ndarray]:
    """shap's own attributions (rows, features, k) and base values (k,) for ``b.x``."""
    native, x, bg = b.native, b.x, b.background
    if case.method == "tree_shap":
        explainer = shap.TreeExplainer(native)  # path-dependent, no background: the default
        values = explainer.shap_values(x)
    elif isinstance(native, Pipeline):  # shap on the standardized data and the final estimator
        scaler, final = native[0], native[-1]
        explainer = shap.LinearExplainer(
            final, masker=shap.maskers.Independent(scaler.transform(bg), max_samples=len(bg))
        )
        values = explainer.shap_values(scaler.transform(x))
    else:
        explainer = shap.LinearExplainer(
            native, masker=shap.maskers.Independent(bg, max_samples=len(bg))
        )
        values = explainer.shap_values(x)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2:
        values = values[:, :, None]
    return values, np.atleast_1d(np.asarray(explainer.expected_value, dtype=np.float64))


# --- (a) additivity


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_attributions_add_up_to_the_model_output(case: Case, built: Callable[[str], Built]) -> None:
    b = built(case.id)
    model, x = b.model, b.x
    assert model.inline is not None, model.inline_error
    assert model.inline_error is None
    assert (model.inline.method, model.inline.output) == (case.method, case.output)
    a = model.inline.explain(x)
    n_out = len(model.classes) if case.task == "classification" else 1
    assert a.method == case.method and a.output == case.output
    assert a.values.shape == (len(x), len(model.features), n_out)
    assert a.base.shape == (len(x), n_out)
    total = a.base + a.values.sum(axis=1)

    assert rel_gap(total, model.inline.model_output(x)) <= RTOL
    native = native_output(case, b.native, x, case.output)
    assert rel_gap(total, native) <= RTOL
    # ...and the served numbers are that same output: probabilities, or the regression value.
    served = model.runtime.predict(x)
    if case.output == "value":
        assert rel_gap(total[:, 0], served) <= RTOL
    elif case.output == "probability":
        assert rel_gap(total, served) <= RTOL
    else:
        link = softmax(total, axis=1) if n_out > 2 else expit(total)
        np.testing.assert_allclose(link, served, atol=1e-6)
        np.testing.assert_allclose(served, native_probabilities(b.native, x), atol=1e-6)


# --- (b) shap agreement


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_attributions_equal_shap(case: Case, built: Callable[[str], Built]) -> None:
    b = built(case.id)
    assert b.model.inline is not None, b.model.inline_error
    ours = b.model.inline.explain(b.x)
    ref_values, ref_base = shap_reference(case, b)
    k = ref_values.shape[2]
    if k == 1 and case.task == "classification":
        # shap gives one log-odds output for a binary margin model; we report both classes.
        assert ours.values.shape[2] == 2
        np.testing.assert_allclose(ours.values[:, :, 0], -ours.values[:, :, 1], rtol=0, atol=0)
        np.testing.assert_allclose(ours.base[:, 0], -ours.base[:, 1], rtol=0, atol=0)
    # For a booster shap returns XGBoost's float32 pred_contribs: allow a few float32 steps
    # of the output's size (ours are summed in float64).
    scale = max(1.0, float(np.abs(b.model.inline.model_output(b.x)).max()))
    atol = 1e-6 * scale if isinstance(case.make, dict) else 1e-9
    np.testing.assert_allclose(ours.values[:, :, -k:], ref_values, rtol=RTOL, atol=atol)
    np.testing.assert_allclose(
        ours.base[:, -k:], np.tile(ref_base, (len(b.x), 1)), rtol=RTOL, atol=atol
    )


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.method == "linear_shap"], ids=lambda c: c.id
)
def test_linear_shap_is_the_closed_form(case: Case, built: Callable[[str], Built]) -> None:
    """w_i (x_i - mean_i) in input space, the scaler folded into the weights by hand."""
    b = built(case.id)
    assert b.model.inline is not None
    est, scale = b.native, 1.0
    if isinstance(est, Pipeline):
        scale, est = est[0].scale_, est[-1]
    w = np.atleast_2d(est.coef_) / scale  # (outputs, features)
    expected = (b.x - b.background.mean(axis=0))[:, :, None] * w.T[None, :, :]
    got = b.model.inline.explain(b.x).values
    np.testing.assert_allclose(got[:, :, -w.shape[0] :], expected, rtol=1e-9, atol=1e-12)


def shap_tree_dict(booster: xgb.Booster, n_out: int) -> dict[str, Any]:
    """The booster's trees as a shap custom tree model, to run shap's own TreeSHAP on them
    (for a Booster, shap.TreeExplainer itself only forwards to XGBoost's pred_contribs)."""
    names = booster.feature_names
    assert names is not None
    trees = []
    for t, g in booster.trees_to_dataframe().groupby("Tree", sort=True):
        g = g.sort_values("Node")
        index = {node: i for i, node in enumerate(g["ID"])}
        leaf = (g["Feature"] == "Leaf").to_numpy()

        def child(
            column: str, g: pd.DataFrame = g, index: dict[str, int] = index, leaf: np.ndarray = leaf
        ) -> np.ndarray:
            return np.array(
                [-1 if is_leaf else index[c] for is_leaf, c in zip(leaf, g[column], strict=True)]
            )

        # XGBoost goes left when float32(x) < t; shap when x <= threshold.
        split = g["Split"].to_numpy(dtype=np.float64).astype(np.float32)
        below = np.nextafter(split, np.float32(-np.inf)).astype(np.float64)
        values = np.zeros((len(g), n_out))
        values[leaf, int(t) % n_out] = g["Gain"].to_numpy()[
            leaf
        ]  # leaf weight; round-robin classes
        trees.append(
            {
                "children_left": child("Yes"),
                "children_right": child("No"),
                "children_default": child("Missing"),
                "features": np.array(
                    [
                        -2 if is_leaf else names.index(f)
                        for is_leaf, f in zip(leaf, g["Feature"], strict=True)
                    ]
                ),
                "thresholds": np.where(leaf, 0.0, below),
                "values": values,
                "node_sample_weight": g["Cover"].to_numpy(dtype=np.float64),
            }
        )
    return {"trees": trees, "base_offset": np.zeros(n_out)}


@pytest.mark.parametrize("case", [c for c in CASES if isinstance(c.make, dict)], ids=lambda c: c.id)
def test_xgboost_equals_shaps_own_tree_shap(case: Case, built: Callable[[str], Built]) -> None:
    """An independent implementation: shap's TreeSHAP over the booster's tree dump."""
    b = built(case.id)
    assert b.model.inline is not None
    n_out = int(case.make.get("num_class", 1)) if isinstance(case.make, dict) else 1
    reference = shap.TreeExplainer(shap_tree_dict(b.native, n_out))
    x32 = b.x.astype(np.float32).astype(np.float64)  # XGBoost compares in float32
    expected = np.asarray(reference.shap_values(x32), dtype=np.float64)
    expected = expected if expected.ndim == 3 else expected[:, :, None]
    ours = b.model.inline.explain(b.x)
    scale = max(1.0, float(np.abs(b.model.inline.model_output(b.x)).max()))
    # pred_contribs are float32: allow a few float32 steps of the output's size
    np.testing.assert_allclose(ours.values[:, :, -n_out:], expected, rtol=RTOL, atol=1e-6 * scale)


# --- hypothesis


PROPERTY_CASES = [
    "xgb-binary",
    "xgb-multiclass",
    "rf-multiclass",
    "gbc-binary",
    "hgb-regression",
    "scaler-logreg",
    "logreg-multiclass",
    "ridge",
]


@pytest.mark.parametrize("case_id", PROPERTY_CASES)
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.integers(0, ROWS - 1), min_size=1, max_size=12))
def test_any_subset_explains_as_in_the_whole_batch(
    case_id: str, built: Callable[[str], Built], rows: list[int]
) -> None:
    """Micro-batching relies on it: a row's explanation does not depend on its batch-mates."""
    b = built(case_id)
    assert b.model.inline is not None
    whole = b.model.inline.explain(b.x)
    part = b.model.inline.explain(b.x[rows])
    np.testing.assert_allclose(part.values, whole.values[rows], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(part.base, whole.base[rows], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case_id", PROPERTY_CASES)
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_additive_on_rows_never_seen(
    case_id: str, built: Callable[[str], Built], data: st.DataObject
) -> None:
    """Rows drawn anywhere inside the background's range, not only data-set rows."""
    b = built(case_id)
    assert b.model.inline is not None
    lo, hi = b.background.min(axis=0), b.background.max(axis=0)
    n = data.draw(st.integers(1, 6), label="rows")
    u = np.array(
        data.draw(
            st.lists(
                st.lists(st.floats(0, 1), min_size=len(lo), max_size=len(lo)),
                min_size=n,
                max_size=n,
            ),
            label="u",
        )
    )
    x = lo + u * (hi - lo)
    a = b.model.inline.explain(x)
    total = a.base + a.values.sum(axis=1)
    case = BY_ID[case_id]
    assert rel_gap(total, native_output(case, b.native, x, case.output)) <= RTOL


# --- demo models


DEMO_EXPECTED = {
    "credit-risk": ("tree_shap", "margin"),
    "breast-cancer": ("tree_shap", "probability"),
    "diabetes": ("linear_shap", "value"),
}


@pytest.mark.parametrize("name", sorted(DEMO_EXPECTED))
def test_demo_models_are_additive_and_equal_shap(name: str) -> None:
    model = attach_inline(load_version(name, "1", DEMO_MODELS / name / "1"))
    assert model.inline is not None, model.inline_error
    assert (model.inline.method, model.inline.output) == DEMO_EXPECTED[name]
    native = model.runtime.native
    bg = model.background
    assert bg is not None
    x = bg[:ROWS]
    a = model.inline.explain(x)
    total = a.base + a.values.sum(axis=1)
    if isinstance(native, xgb.Booster):
        margin = np.asarray(
            native.predict(xgb.DMatrix(x, feature_names=native.feature_names), output_margin=True),
            dtype=np.float64,
        )
        assert rel_gap(total, np.column_stack([-margin, margin])) <= RTOL
        reference = shap.TreeExplainer(native)
        np.testing.assert_allclose(  # XGBoost's float32 pred_contribs, ours in float64
            a.values[:, :, 1],
            reference.shap_values(x),
            rtol=RTOL,
            atol=1e-6 * max(1, np.abs(margin).max()),
        )
        own = shap.TreeExplainer(shap_tree_dict(native, 1)).shap_values(
            x.astype(np.float32).astype(float)
        )
        np.testing.assert_allclose(
            a.values[:, :, 1], own, rtol=RTOL, atol=1e-6 * max(1, np.abs(margin).max())
        )
    elif model.inline.method == "tree_shap":
        assert rel_gap(total, native.predict_proba(x)) <= RTOL
        reference = shap.TreeExplainer(native)
        np.testing.assert_allclose(a.values, reference.shap_values(x), rtol=RTOL, atol=1e-9)
    else:
        assert rel_gap(total[:, 0], native.predict(x)) <= RTOL
        reference = shap.LinearExplainer(
            native, masker=shap.maskers.Independent(bg, max_samples=len(bg))
        )
        np.testing.assert_allclose(
            a.values[:, :, 0], reference.shap_values(x), rtol=RTOL, atol=1e-9
        )
    np.testing.assert_allclose(
        a.base[0, -np.atleast_1d(reference.expected_value).size :],
        np.atleast_1d(reference.expected_value),
        rtol=RTOL,
    )


# --- (c) no inline explainer


def test_manifest_inline_none_has_no_explainer(tmp_path: Path) -> None:
    b = build(BY_ID["rf-binary"], tmp_path, manifest={"explain": {"inline": "none"}})
    assert b.model.inline is None
    assert b.model.inline_error is not None
    assert "explain.inline: none" in b.model.inline_error
    # the model itself still serves
    np.testing.assert_allclose(b.model.runtime.predict(b.x), b.native.predict_proba(b.x))
    assert describe_version(b.model)["explain"]["inline"] is None


def test_k_neighbors_has_no_explainer_and_points_to_kernel_shap(tmp_path: Path) -> None:
    case = Case("knn", "iris", lambda: neighbors.KNeighborsClassifier(5), "", "", "classification")
    b = build(case, tmp_path)
    assert b.model.inline is None
    assert b.model.inline_error is not None
    assert "kernel_shap" in b.model.inline_error
    assert "KNeighborsClassifier" in b.model.inline_error


def test_asking_for_a_method_the_model_cannot_have(tmp_path: Path) -> None:
    b = build(BY_ID["rf-multiclass"], tmp_path, manifest={"explain": {"inline": "linear_shap"}})
    assert b.model.inline is None
    assert b.model.inline_error is not None and "linear_shap" in b.model.inline_error


def test_multiclass_gradient_boosting_is_explained_in_log_odds_per_class(tmp_path: Path) -> None:
    """shap's TreeExplainer explains GradientBoostingClassifier for two classes only; xserve
    reads the per-class trees itself, and the values add up to decision_function."""
    case = Case(
        "gbc-multiclass",
        "iris",
        lambda: ensemble.GradientBoostingClassifier(n_estimators=10, random_state=0),
        "tree_shap",
        "margin",
        "classification",
    )
    b = build(case, tmp_path)
    with pytest.raises(Exception, match="binary"):
        shap.TreeExplainer(b.native)
    assert b.model.inline is not None, b.model.inline_error
    a = b.model.inline.explain(b.x)
    assert (a.method, a.output) == ("tree_shap", "margin")
    assert rel_gap(a.base + a.values.sum(axis=1), b.native.decision_function(b.x)) <= RTOL


# --- regressions


def test_xgboost_log_link_regression_is_explained_in_margin_space(tmp_path: Path) -> None:
    """count:poisson predicts exp(margin); the attributions add up to the margin, so the
    explanation must say 'margin', not 'value'."""
    case = Case(
        "xgb-poisson", "diabetes", _xgb("count:poisson"), "tree_shap", "margin", "regression"
    )
    b = build(case, tmp_path)
    assert b.model.inline is not None
    a = b.model.inline.explain(b.x)
    assert a.output == "margin"
    total = a.base + a.values.sum(axis=1)
    assert rel_gap(total, native_output(case, b.native, b.x, "margin")) <= RTOL
    assert rel_gap(np.exp(total[:, 0]), b.model.runtime.predict(b.x)) <= RTOL


def test_scaler_without_centering_folds_correctly(tmp_path: Path) -> None:
    """StandardScaler(with_mean=False) fits mean_ but does not subtract it."""
    case = Case(
        "scaler-nomean",
        "breast_cancer",
        lambda: make_pipeline(
            StandardScaler(with_mean=False), linear_model.LogisticRegression(max_iter=10_000)
        ),
        "linear_shap",
        "margin",
        "classification",
    )
    b = build(case, tmp_path)
    assert b.model.inline is not None, b.model.inline_error
    a = b.model.inline.explain(b.x)
    total = a.base + a.values.sum(axis=1)
    assert rel_gap(total, native_output(case, b.native, b.x, "margin")) <= RTOL
    w = b.native[-1].coef_[0] / b.native[0].scale_
    np.testing.assert_allclose(
        a.values[:, :, 1], (b.x - b.background.mean(axis=0)) * w, rtol=1e-9, atol=1e-12
    )
