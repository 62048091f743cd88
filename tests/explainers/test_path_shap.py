"""The float64 recursive TreeSHAP kernel (``path_shap``) on the trees the leaf tables leave
to it: paths over more than 12 distinct features, dart boosters, categorical splits,
LightGBM-style zero-as-missing splits and float64 thresholds.

References, none of them xserve: Shapley values computed by brute force over every
coalition of the path-dependent game (small trees), shap's own float64 TreeSHAP run on
the trees' dump, and XGBoost's ``pred_contribs`` (float32, so to a few float32 steps
of the output). Attributions plus base must add up to XGBoost's margin to 1e-5 of the
output's scale.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import shap
import xgboost as xgb
import yaml
from sklearn import datasets
from sklearn.datasets import make_regression

from xserve.explainers.attach import attach_inline
from xserve.explainers.leaf_tables import ZERO_BAND, Tree, TreeEnsemble, join
from xserve.explainers.path_shap import PathShap, exact_kernel, expected_values
from xserve.explainers.tree_shap import XGBoostTreeShap, xgboost_model
from xserve.repository.version import load_version

RTOL = 1e-5


# --- brute force: every coalition of the path-dependent game


def _goes_left(ens: TreeEnsemble, node: int, v: float) -> bool:
    """The ensemble's documented split rule, written out plainly."""
    if math.isnan(v):
        return bool(ens.default_left[node])
    if ens.zero_missing is not None and ens.zero_missing[node] and abs(v) <= ZERO_BAND:
        return bool(ens.default_left[node])
    if ens.categorical is not None and ens.categorical[node]:
        assert ens.category_start is not None and ens.category_bits is not None
        if v <= -1.0 or (v < 0 and not ens.truncate_negative_categories) or v >= 2**31:
            return False
        c = int(v)  # truncates toward zero
        words = ens.category_bits[ens.category_start[node] : ens.category_start[node + 1]]
        return c // 32 < len(words) and bool((int(words[c // 32]) >> (c % 32)) & 1)
    t = float(ens.threshold[node])
    return v <= t if ens.left_if_equal else v < t


def _game(ens: TreeEnsemble, row: np.ndarray, known: frozenset[int]) -> np.ndarray:
    """E[f(x) | x_S] as TreeSHAP defines it: known features follow the row, unknown ones
    split the node's cover between both children."""

    def value(node: int) -> float:
        if ens.left[node] < 0:
            return float(ens.value[node])
        lc, rc = int(ens.left[node]), int(ens.right[node])
        f = int(ens.feature[node])
        if f in known:
            return value(lc if _goes_left(ens, node, float(row[f])) else rc)
        c = ens.cover[node]
        if c == 0:  # no training data reached it: nothing to average
            return 0.0
        return float((ens.cover[lc] * value(lc) + ens.cover[rc] * value(rc)) / c)

    out = np.zeros(ens.n_outputs)
    for root, k in zip(ens.roots, ens.outputs, strict=True):
        out[k] += value(int(root))
    return out


def brute_force(ens: TreeEnsemble, x: np.ndarray) -> np.ndarray:
    """Shapley values (rows, features, outputs) by enumerating every coalition."""
    rows = np.asarray(x, dtype=ens.threshold.dtype).astype(np.float64)
    n = ens.n_features
    players = list(range(n))
    phi = np.zeros((len(rows), n, ens.n_outputs))
    weight = [math.factorial(s) * math.factorial(n - 1 - s) / math.factorial(n) for s in range(n)]
    for r, row in enumerate(rows):
        values = {
            frozenset(s): _game(ens, row, frozenset(s))
            for size in range(n + 1)
            for s in itertools.combinations(players, size)
        }
        for j in players:
            for s, v in values.items():
                if j not in s:
                    phi[r, j] += weight[len(s)] * (values[s | {j}] - v)
    return phi


def _check_against_brute_force(ens: TreeEnsemble, x: np.ndarray) -> None:
    kernel = PathShap(ens)
    ours = kernel.shap_values(x)
    expected = brute_force(ens, x)
    scale = max(1.0, float(np.abs(kernel.predict(x)).max()))
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12 * scale)
    # efficiency: the values add up to f(x) - E[f]
    total = expected_values(ens) + ours.sum(axis=1)
    np.testing.assert_allclose(total, kernel.predict(x), rtol=1e-12, atol=1e-12 * scale)


def _near_thresholds(ens: TreeEnsemble, x: np.ndarray, n: int = 40) -> np.ndarray:
    """Rows of ``x`` with features set on split thresholds, and one float32 step either side."""
    internal = [i for i in np.flatnonzero(ens.left >= 0) if not _is_categorical(ens, i)]
    rows = np.repeat(x[:n], 3, axis=0).astype(np.float64)
    for i, node in enumerate(internal[: 3 * n]):
        t = np.float32(ens.threshold[node])
        for step, toward in enumerate((-np.inf, None, np.inf)):
            value = t if toward is None else np.nextafter(t, np.float32(toward))
            rows[(3 * i + step) % len(rows), ens.feature[node]] = float(value)
    return rows


def _is_categorical(ens: TreeEnsemble, node: int) -> bool:
    return ens.categorical is not None and bool(ens.categorical[node])


# --- small trees against brute force


def _small_xgboost(params: dict[str, Any], categorical: bool = False) -> tuple[xgb.Booster, Any]:
    rng = np.random.default_rng(3)
    n = 600
    x = rng.normal(size=(n, 6))
    x[:, 0] = np.round(x[:, 0], 1)  # repeated values: rows land on thresholds
    if categorical:
        x[:, 1] = rng.integers(0, 9, n)
        x[:, 4] = rng.integers(0, 40, n)
    x[rng.random(x.shape) < 0.08] = np.nan
    filled = np.nan_to_num(x)
    y = filled[:, 0] * 2 + np.isin(filled[:, 1], [1, 4, 7]) + filled[:, 2] ** 2
    if "binary" in str(params):
        y = y > 1.2
    elif "multi" in str(params):
        y = np.digitize(y, np.quantile(y, [1 / 3, 2 / 3]))
    types = ["q", "c", "q", "q", "c", "q"] if categorical else None
    dm = xgb.DMatrix(x, y, feature_types=types, enable_categorical=categorical)
    booster = xgb.train({"seed": 0, "nthread": 1, "min_child_weight": 0, **params}, dm, 4)
    return booster, x


SMALL = {
    "deep-repeated": ({"max_depth": 6}, False),
    "dart": ({"booster": "dart", "rate_drop": 0.5, "max_depth": 4}, False),
    "categorical-binary": (
        {"objective": "binary:logistic", "max_depth": 4, "max_cat_to_onehot": 1},
        True,
    ),
    "multiclass": ({"objective": "multi:softprob", "num_class": 3, "max_depth": 3}, False),
}


@pytest.mark.parametrize("case", sorted(SMALL))
def test_small_boosters_equal_brute_force_and_xgboost(case: str) -> None:
    params, categorical = SMALL[case]
    booster, x = _small_xgboost(params, categorical)
    ens, base = xgboost_model(booster)
    rows = np.vstack([x[:12], _near_thresholds(ens, x, 8)])
    if categorical:  # categories beyond the sets, negative, fractional and huge
        rows[:4, 1] = [-0.5, 2.7, 1e9, 63]
    _check_against_brute_force(ens, rows)
    dm = xgb.DMatrix(rows, feature_types=booster.feature_types, enable_categorical=categorical)
    margin = np.asarray(booster.predict(dm, output_margin=True), dtype=np.float64)
    margin = margin.reshape(len(rows), -1)
    ours = PathShap(ens).shap_values(rows)
    scale = max(1.0, float(np.abs(margin).max()))
    gap = np.abs(base + expected_values(ens) + ours.sum(axis=1) - margin)
    assert gap.max() <= RTOL * scale
    contribs = np.asarray(booster.predict(dm, pred_contribs=True), dtype=np.float64)
    contribs = contribs if contribs.ndim == 3 else contribs[:, None, :]
    np.testing.assert_allclose(
        ours, contribs[:, :, :-1].transpose(0, 2, 1), rtol=RTOL, atol=1e-6 * scale
    )


def test_lightgbm_rules_equal_brute_force() -> None:
    """float64 thresholds compared with <=, zero-as-missing splits and category sets with
    LightGBM's truncation, on a hand-made ensemble where a feature repeats on a path."""
    # node: 0 x0<=0.25 (zero-missing, default left) | 1 cat x1 in {1,3,33} | 2 x0<=1e-300
    # 3 x2<=-1 | leaves 4..8
    trees = [
        Tree(
            left=[1, 3, 5, 7, -1, -1, -1, -1, -1],
            right=[2, 4, 6, 8, -1, -1, -1, -1, -1],
            feature=[0, 1, 0, 2, 0, 0, 0, 0, 0],
            threshold=[0.25, 0.0, 1e-300, -1.0, 0, 0, 0, 0, 0],
            default_left=[True, False, False, True, False, False, False, False, False],
            cover=[100.0, 60.0, 40.0, 45.0, 15.0, 10.0, 30.0, 20.0, 25.0],
            value=[0, 0, 0, 0, 1.5, -2.0, 0.5, 3.0, -1.0],
            categories=[None, [1, 3, 33], None, None, None, None, None, None, None],
            zero_missing=[True, False, False, False, False, False, False, False, False],
        ),
        Tree(
            left=[1, -1, 3, -1, -1],
            right=[2, -1, 4, -1, -1],
            feature=[2, 0, 0, 0, 0],
            threshold=[0.5, 0, 0.1, 0, 0],
            default_left=[False, False, True, False, False],
            cover=[100.0, 30.0, 70.0, 50.0, 20.0],
            value=[0, 0.25, 0, -0.75, 2.0],
        ),
    ]
    ens = join(
        trees, 3, 1, left_if_equal=True, threshold_dtype=np.float64,
        truncate_negative_categories=True,
    )  # fmt: skip
    assert isinstance(exact_kernel(ens)[0], PathShap)  # the tables take neither rule
    rows = np.array(
        [
            [0.25, 1, -1.0],
            [np.nextafter(0.25, 1), 3, -0.99],
            [0.0, 33.9, 0.5],
            [1e-36, -0.5, np.nan],
            [-1e-36, np.nan, 0.6],
            [np.nan, 2, 0.5],
            [1e-300, 64, -2],
            [2e-300, 1, 0.1],
            [-0.3, -1.0, 7],
        ]
    )
    _check_against_brute_force(ens, rows)
    # the rules themselves: a value within the zero band is missing (default left)
    same = PathShap(ens).predict(np.array([[1e-36, 1, 0.5], [np.nan, 1, 0.5], [-1e-36, 1, 0.5]]))
    np.testing.assert_array_equal(same, np.full((3, 1), same[0, 0]))


# --- the wide, deep booster that used to fall back to float32 pred_contribs


@pytest.fixture(scope="module")
def wide() -> tuple[xgb.Booster, np.ndarray]:
    x, y = make_regression(3000, 30, n_informative=30, noise=1.0, random_state=1240)
    y = y + 40 * np.sin(x[:, 0] * x[:, 1]) + 20 * np.abs(x[:, 2] * x[:, 3] * x[:, 4])
    params = {
        "objective": "reg:squarederror",
        "max_depth": 18,
        "eta": 0.3,
        "min_child_weight": 0,
        "lambda": 0.01,
        "colsample_bynode": 0.5,
        "seed": 1234,
        "nthread": 1,
    }
    return xgb.train(params, xgb.DMatrix(x, y), 4), x


def _shap_dump(ens: TreeEnsemble) -> dict[str, Any]:
    """A plain-split ensemble as a shap custom tree model (shap goes left on x <= t)."""
    trees = []
    for t, root in enumerate(ens.roots):
        end = ens.roots[t + 1] if t + 1 < len(ens.roots) else len(ens.left)
        nodes = slice(int(root), int(end))
        leaf = ens.left[nodes] < 0
        below = np.nextafter(ens.threshold[nodes], np.float32(-np.inf)).astype(np.float64)
        trees.append(
            {
                "children_left": np.where(leaf, -1, ens.left[nodes] - root),
                "children_right": np.where(leaf, -1, ens.right[nodes] - root),
                "children_default": np.where(
                    leaf,
                    -1,
                    np.where(ens.default_left[nodes], ens.left[nodes], ens.right[nodes]) - root,
                ),
                "features": np.where(leaf, -2, ens.feature[nodes]),
                "thresholds": np.where(leaf, 0.0, below),
                "values": ens.value[nodes][:, None],
                "node_sample_weight": ens.cover[nodes],
            }
        )
    return {"trees": trees, "base_offset": 0.0}


def test_the_wide_deep_booster_is_exact(wide: tuple[xgb.Booster, np.ndarray]) -> None:
    booster, x = wide
    ens, base = xgboost_model(booster)
    kernel, why = exact_kernel(ens)
    assert isinstance(kernel, PathShap) and why is not None and "distinct features" in why
    rows = np.vstack([x[:40], _near_thresholds(ens, x, 20)])
    rows[::7, 5] = np.nan
    ours = kernel.shap_values(rows)[:, :, 0]
    margin = np.asarray(booster.predict(xgb.DMatrix(rows), output_margin=True), np.float64)
    scale = np.maximum(np.abs(margin), 1.0)
    assert (
        np.max(np.abs(base[0] + expected_values(ens)[0] + ours.sum(axis=1) - margin) / scale) < RTOL
    )
    # shap's own float64 TreeSHAP over the same trees: equal to float64 rounding
    own = shap.TreeExplainer(_shap_dump(ens)).shap_values(rows.astype(np.float32).astype(float))
    np.testing.assert_allclose(ours, own, rtol=1e-9, atol=1e-9)
    # XGBoost's float32 pred_contribs: within its rounding of the contributions' size
    contribs = booster.predict(xgb.DMatrix(rows), pred_contribs=True)[:, :-1]
    np.testing.assert_allclose(
        ours, contribs, rtol=RTOL, atol=1e-6 * np.abs(ours).sum(axis=1).max()
    )


def _version(folder: Path, booster: xgb.Booster, x: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    booster.save_model(str(folder / "model.json"))
    names = [f"f{i}" for i in range(x.shape[1])]
    pd.DataFrame(x[:64], columns=names).to_csv(folder / "background.csv", index=False)
    manifest = {
        "flavor": "xgboost",
        "artifact": "model.json",
        "features": [{"name": n} for n in names],
        "background": "background.csv",
    }
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


def test_the_wide_booster_serves_with_its_inline_explainer(
    wide: tuple[xgb.Booster, np.ndarray], tmp_path: Path
) -> None:
    """It used to fail its additivity check (float32 sums) and answer 422 to explain=true."""
    booster, x = wide
    model = attach_inline(load_version("wide", "1", _version(tmp_path / "wide" / "1", booster, x)))
    assert model.inline is not None, model.inline_error
    assert isinstance(model.inline, XGBoostTreeShap) and model.inline.tables is None
    a = model.inline.explain(x[100:130])
    total = a.base + a.values.sum(axis=1)
    margin = booster.predict(xgb.DMatrix(x[100:130]), output_margin=True)
    assert np.max(np.abs(total[:, 0] - margin) / np.maximum(np.abs(margin), 1)) < RTOL


def test_categorical_dart_booster_serves_exactly(tmp_path: Path) -> None:
    x, y = datasets.load_breast_cancer(return_X_y=True)
    x = x[:, :8].copy()
    x[:, 3] = np.digitize(x[:, 3], np.quantile(x[:, 3], [0.2, 0.4, 0.6, 0.8]))
    dm = xgb.DMatrix(x, y, feature_types=["q", "q", "q", "c"] + ["q"] * 4, enable_categorical=True)
    params = {"objective": "binary:logistic", "booster": "dart", "rate_drop": 0.3,
              "max_cat_to_onehot": 1, "seed": 0, "nthread": 1}  # fmt: skip
    booster = xgb.train(params, dm, 10)
    categorical = xgboost_model(booster)[0].categorical
    assert categorical is not None and categorical.any()
    model = attach_inline(load_version("cat", "1", _version(tmp_path / "cat" / "1", booster, x)))
    assert model.inline is not None, model.inline_error
    rows = x[:50].copy()
    rows[:10, 3] = [0, 1, 2, 3, 4, 5, -1, np.nan, 2.5, 100]
    a = model.inline.explain(rows)
    dm_rows = xgb.DMatrix(rows, feature_types=booster.feature_types, enable_categorical=True)
    margin = np.asarray(booster.predict(dm_rows, output_margin=True), dtype=np.float64)
    total = a.base + a.values.sum(axis=1)
    np.testing.assert_allclose(total, np.column_stack([-margin, margin]), rtol=RTOL, atol=RTOL)
    contribs = booster.predict(dm_rows, pred_contribs=True)
    np.testing.assert_allclose(a.values[:, :, 1], contribs[:, :-1], rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(a.base[:, 1], contribs[:, -1], rtol=RTOL, atol=1e-6)


OBJECTIVES = [
    ("reg:squarederror", {"base_score": 7.5}),
    ("reg:absoluteerror", {}),
    ("reg:quantileerror", {"quantile_alpha": 0.3}),
    ("reg:pseudohubererror", {}),
    ("reg:squaredlogerror", {}),
    ("reg:gamma", {}),
    ("reg:tweedie", {}),
    ("count:poisson", {}),
    ("survival:cox", {}),
    ("reg:logistic", {}),
    ("binary:logistic", {"base_score": 0.2}),
    ("binary:logitraw", {}),
    ("binary:hinge", {}),
    ("multi:softmax", {"num_class": 3}),
]


@pytest.mark.parametrize(("objective", "extra"), OBJECTIVES, ids=[o for o, _ in OBJECTIVES])
def test_base_score_is_read_in_margin_space(objective: str, extra: dict[str, Any]) -> None:
    """base_score (stored as a prediction) turned into the margin each objective adds:
    with the trees' leaves it gives XGBoost's own margin, and the attributions add up to it."""
    x, y = datasets.load_diabetes(return_X_y=True)
    if objective.startswith(("binary:", "reg:logistic")):
        y = (y > 140).astype(float)
    elif objective.startswith("multi:"):
        y = np.digitize(y, [100, 200])
    params = {"objective": objective, "max_depth": 3, "seed": 0, "nthread": 1, **extra}
    booster = xgb.train(params, xgb.DMatrix(x, y), 10)
    ens, base = xgboost_model(booster)
    margin = booster.predict(xgb.DMatrix(x), output_margin=True).reshape(len(x), -1)
    scale = max(1.0, float(np.abs(margin).max()))
    kernel = PathShap(ens)
    assert np.abs(kernel.predict(x) + base - margin).max() <= RTOL * scale
    total = base + expected_values(ens) + kernel.shap_values(x).sum(axis=1)
    assert np.abs(total - margin).max() <= RTOL * scale


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression"])
def test_categorical_histogram_boosting_is_exact(kind: str) -> None:
    """shap reads a categorical split of HistGradientBoosting as ``x <= 0`` (its values
    miss the model's output by whole units); xserve reads the category sets over the
    model's own encoding, and puts the values back on the input's columns."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    from xserve.explainers.tree_shap import (
        SklearnTreeShap,
        encode_categories,
        encoded_order,
        hist_gradient_boosting_model,
    )

    rng = np.random.default_rng(0)
    n = 2000
    x = np.column_stack(
        [rng.normal(size=n), rng.integers(0, 12, n), rng.normal(size=n), rng.integers(0, 5, n)]
    ).astype(float)
    x[:100, 1] = np.nan
    y = np.isin(x[:, 1], [1, 4, 7]) ^ (x[:, 0] > 0.5) ^ (x[:, 3] == 2)
    if kind == "regression":
        estimator: Any = HistGradientBoostingRegressor(max_iter=6, max_leaf_nodes=6)
        estimator.set_params(categorical_features=[1, 3]).fit(x, 3.0 * y + x[:, 2])
    else:
        target = y if kind == "binary" else np.digitize(x[:, 2], [-0.5, 0.5]) + y
        estimator = HistGradientBoostingClassifier(max_iter=6, max_leaf_nodes=6)
        estimator.set_params(categorical_features=[1, 3]).fit(x, target)
    rows = x[100:140].copy()
    rows[:10, 1] = [-1, -0.5, 12, 13, 2.7, np.nan, 200, 11, 3, 0]  # unknown, odd, missing
    rows[10:14, 3] = [np.nan, 7, -2, 4]
    explainer = SklearnTreeShap(_Version(estimator, kind))  # type: ignore[arg-type]
    a = explainer.explain(rows)
    total = a.base + a.values.sum(axis=1)
    expected = explainer.model_output(rows)
    assert np.max(np.abs(total - expected) / np.maximum(np.abs(expected), 1)) <= RTOL
    # against brute force, on the encoded columns mapped back to the input's
    ens, _ = hist_gradient_boosting_model(estimator)
    assert ens.categorical is not None and ens.categorical.any()
    brute = np.empty((len(rows), x.shape[1], ens.n_outputs))
    brute[:, encoded_order(estimator)] = brute_force(ens, encode_categories(estimator, rows))
    ours = a.values if kind != "binary" else a.values[:, :, 1:]
    np.testing.assert_allclose(ours, brute, rtol=1e-9, atol=1e-12)


class _Version:
    """What SklearnTreeShap reads of a model version."""

    def __init__(self, estimator: Any, kind: str) -> None:
        self.runtime = type("Runtime", (), {"native": estimator})()
        self.task = "regression" if kind == "regression" else "classification"
        self.name, self.version = "m", "1"


def _random_tree(rng: np.random.Generator, n_features: int, depth: int, output: int) -> Tree:
    """A random tree: splits repeat features, some children have no cover, some nodes
    split on category sets."""
    left: list[int] = []
    right: list[int] = []
    feature: list[int] = []
    threshold: list[float] = []
    default_left: list[bool] = []
    cover: list[float] = []
    value: list[float] = []
    categories: list[list[int] | None] = []

    def grow(d: int, weight: float) -> int:
        me = len(left)
        for column in (left, right, feature):
            column.append(-1 if column is not feature else 0)
        threshold.append(0.0)
        default_left.append(bool(rng.random() < 0.5))
        cover.append(weight)
        value.append(float(rng.normal()))
        categories.append(None)
        if d < depth and rng.random() < 0.8:
            feature[me] = int(rng.integers(n_features))
            if rng.random() < 0.3:
                categories[me] = sorted(rng.choice(6, size=int(rng.integers(1, 4)), replace=False))
            else:
                threshold[me] = float(np.float32(rng.normal()))
            share = 0.0 if rng.random() < 0.1 else float(rng.uniform(0.05, 0.95))
            left[me] = grow(d + 1, weight * share)
            right[me] = grow(d + 1, weight * (1 - share))
        return me

    grow(0, 100.0)
    return Tree(
        left, right, feature, threshold, default_left, cover, value, output, categories=categories
    )


@pytest.mark.parametrize("seed", range(6))
def test_random_trees_equal_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    trees = [_random_tree(rng, 5, 6, output=i % 2) for i in range(4)]
    ens = join(trees, 5, 2)
    rows = rng.normal(size=(12, 5))
    rows[rng.random(rows.shape) < 0.2] = np.nan
    rows[:, 4] = rng.integers(-1, 8, 12)  # categories, some outside every set
    _check_against_brute_force(ens, rows)
