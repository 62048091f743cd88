"""The table-driven TreeSHAP kernel against XGBoost's own recursive TreeSHAP.

Boosters are trained on the data sets scikit-learn ships, with missing values
put in (default directions), deep trees over few features (a feature repeats on
a path), rows placed exactly on split thresholds (``<`` against ``<=``), and
every task. Values must equal ``pred_contribs`` to a few float32 steps (XGBoost
sums in float32, the tables in float64) and add up to the margin to 1e-5.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shap
import xgboost as xgb
from sklearn import datasets, ensemble, tree

from xserve.explainers import leaf_tables
from xserve.explainers.leaf_tables import LeafTables, TooLarge, TreeEnsemble
from xserve.explainers.tree_shap import shap_ensemble, xgboost_ensemble

RTOL = 1e-5


def _data(name: str, missing: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    x = x.astype(np.float64)
    rng = np.random.default_rng(seed)
    x[rng.random(x.shape) < missing] = np.nan
    return x, y


def _booster(x: np.ndarray, y: np.ndarray, params: dict[str, Any], rounds: int) -> xgb.Booster:
    return xgb.train({"seed": 0, "nthread": 1, **params}, xgb.DMatrix(x, y), rounds)


def _on_thresholds(booster: xgb.Booster, x: np.ndarray) -> np.ndarray:
    """Copies of ``x`` whose features sit exactly on split thresholds of the model."""
    ens = xgboost_ensemble(booster)
    internal = np.flatnonzero(ens.left >= 0)
    rows = x[: len(internal) % 50 + 50].copy()
    for i, node in enumerate(internal[: len(rows) * 3]):
        rows[i % len(rows), ens.feature[node]] = ens.threshold[node]
    return rows


def _reference(booster: xgb.Booster, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    raw = np.asarray(
        booster.predict(xgb.DMatrix(x), pred_contribs=True, validate_features=False),
        dtype=np.float64,
    )
    if raw.ndim == 2:
        raw = raw[:, None, :]
    return raw[:, :, :-1].transpose(0, 2, 1), raw[:, :, -1]


CASES = {
    "binary-missing": ("breast_cancer", 0.1, {"objective": "binary:logistic", "max_depth": 6}, 30),
    "multiclass-missing": (
        "wine",
        0.1,
        {"objective": "multi:softprob", "num_class": 3, "max_depth": 5},
        20,
    ),
    "regression": ("diabetes", 0.0, {"objective": "reg:squarederror", "max_depth": 4}, 40),
    # 4 features, depth 8: features come back on every path
    "deep-few-features": (
        "iris",
        0.05,
        {"objective": "multi:softprob", "num_class": 3, "max_depth": 8, "min_child_weight": 0},
        10,
    ),
    "poisson": ("diabetes", 0.0, {"objective": "count:poisson", "max_depth": 3}, 30),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tables_equal_xgboosts_tree_shap(case: str) -> None:
    data, missing, params, rounds = CASES[case]
    x, y = _data(data, missing)
    booster = _booster(x, y, params, rounds)
    tables = LeafTables(xgboost_ensemble(booster))
    for rows in (x, _on_thresholds(booster, x)):
        ref_values, ref_base = _reference(booster, rows)
        ours = tables.shap_values(rows)
        margin = np.asarray(
            booster.predict(xgb.DMatrix(rows), output_margin=True), dtype=np.float64
        ).reshape(len(rows), -1)
        scale = max(1.0, float(np.abs(margin).max()))
        np.testing.assert_allclose(ours, ref_values, rtol=RTOL, atol=1e-6 * scale)
        for i in range(3):  # a lone row takes the one-row kernel: the same sums
            np.testing.assert_allclose(tables.shap_values(rows[i : i + 1]), ours[i : i + 1])
        gap = np.abs(ref_base + ours.sum(axis=1) - margin) / np.maximum(np.abs(margin), 1.0)
        assert gap.max() <= RTOL


def test_a_tree_is_explained_exactly_by_hand() -> None:
    """One split (x0 < 0.5: left leaf 1.0 with cover 3, right leaf 5.0 with cover 1):
    phi_0 is f(x) minus the cover-weighted mean 2.0."""
    ens = TreeEnsemble(
        roots=np.array([0]),
        outputs=np.array([0]),
        left=np.array([1, -1, -1]),
        right=np.array([2, -1, -1]),
        feature=np.array([0, 0, 0]),
        threshold=np.array([0.5, 1.0, 5.0], dtype=np.float32),
        default_left=np.array([False, False, False]),
        cover=np.array([4.0, 3.0, 1.0]),
        value=np.array([0.0, 1.0, 5.0]),
        n_features=2,
        n_outputs=1,
    )
    phi = LeafTables(ens).shap_values(np.array([[0.0, 7.0], [0.5, 7.0], [np.nan, 7.0]]))
    np.testing.assert_allclose(phi[:, :, 0], [[-1.0, 0.0], [3.0, 0.0], [3.0, 0.0]])


def test_table_budget_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _data("breast_cancer", 0.0)
    booster = _booster(x, y, {"objective": "binary:logistic", "max_depth": 6}, 5)
    monkeypatch.setattr(leaf_tables, "MAX_TABLE_ENTRIES", 1000)
    with pytest.raises(TooLarge):
        LeafTables(xgboost_ensemble(booster))


def test_dart_is_tabulated_with_its_weights_and_categorical_splits_are_not() -> None:
    """A dart tree's leaves are scaled by its weight (the tables then equal pred_contribs);
    category sets are left to the recursive kernel (``path_shap``)."""
    x, y = _data("breast_cancer", 0.1)
    dart = _booster(x, y, {"objective": "binary:logistic", "booster": "dart", "rate_drop": 0.5}, 8)
    weights = json.loads(dart.save_raw("json"))["learner"]["gradient_booster"]["weight_drop"]
    assert len(set(weights)) > 1  # some trees were dropped and rescaled
    ref_values, _ = _reference(dart, x)
    ours = LeafTables(xgboost_ensemble(dart)).shap_values(x)
    np.testing.assert_allclose(ours, ref_values, rtol=RTOL, atol=1e-6)
    cats = np.column_stack([x[:, :3], y * 2 + (x[:, 3] > np.nanmedian(x[:, 3]))])
    dm = xgb.DMatrix(cats, y, feature_types=["q", "q", "q", "c"], enable_categorical=True)
    booster = xgb.train({"objective": "binary:logistic", "max_cat_to_onehot": 1}, dm, 5)
    assert any(any(t["split_type"]) for t in _trees(booster))
    with pytest.raises(ValueError, match="categorical"):
        LeafTables(xgboost_ensemble(booster))


def _trees(booster: xgb.Booster) -> list[dict[str, Any]]:
    learner = json.loads(booster.save_raw("json"))["learner"]
    return learner["gradient_booster"]["model"]["trees"]  # type: ignore[no-any-return]


def test_kernels_compile_without_a_writable_cache(tmp_path: Path) -> None:
    """A read-only root filesystem leaves numba no cache location: the kernels compile
    in each process instead, explain exactly, and write no cache file."""
    # NUMBA_CACHE_DIR as the only place numba may cache: first a folder it can write,
    # then one it cannot create (beneath a file: not even root can).
    code = f"import {__name__} as t\nt.test_a_tree_is_explained_exactly_by_hand()\n"
    (tmp_path / "a-file").touch()
    for cache, writable in [(tmp_path / "numba", True), (tmp_path / "a-file" / "numba", False)]:
        env = {
            **os.environ,
            "NUMBA_CACHE_LOCATOR_CLASSES": "UserProvidedCacheLocator",
            "NUMBA_CACHE_DIR": str(cache),
            "PYTHONPATH": os.pathsep.join(sys.path),
        }
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        written = [p.name for p in tmp_path.rglob("*.nb[ic]")]
        if writable:  # the same run caches the kernels where it can
            assert any(name.startswith("leaf_tables.") for name in written), written
            shutil.rmtree(cache)
        else:
            assert not written and not cache.exists()


SKLEARN = {
    "rf-binary-missing": (
        "breast_cancer",
        0.1,
        lambda: ensemble.RandomForestClassifier(20, max_depth=6, random_state=0),
    ),
    "rf-multiclass-deep": (
        "wine",
        0.0,
        lambda: ensemble.RandomForestClassifier(20, random_state=0),
    ),
    "gb-binary": (
        "breast_cancer",
        0.0,
        lambda: ensemble.GradientBoostingClassifier(n_estimators=30),
    ),
    "extratrees-regression": (
        "diabetes",
        0.0,
        lambda: ensemble.ExtraTreesRegressor(20, max_depth=6, random_state=0),
    ),
    "tree-regression": ("diabetes", 0.0, lambda: tree.DecisionTreeRegressor(max_depth=8)),
}


@pytest.mark.parametrize("case", sorted(SKLEARN))
def test_tables_equal_shap_on_scikit_learn_trees(case: str) -> None:
    """The same trees as shap reads them, in float64 on both sides: equal to rounding."""
    data, missing, make = SKLEARN[case]
    x, y = _data(data, missing)
    estimator = make().fit(x, y)
    explainer = shap.TreeExplainer(estimator)
    tables = LeafTables(shap_ensemble(explainer.model, x.shape[1]))
    ensemble_ = tables.ensemble
    # rows sitting exactly on thresholds (sklearn goes left on <=, in float32)
    on = x[:60].copy()
    internal = np.flatnonzero(ensemble_.left >= 0)
    for i, node in enumerate(internal[:180]):
        on[i % len(on), ensemble_.feature[node]] = ensemble_.threshold[node]
    for rows in (x, on):
        ref = np.asarray(explainer.shap_values(rows, check_additivity=False), dtype=np.float64)
        ours = tables.shap_values(rows)
        np.testing.assert_allclose(ours, ref.reshape(ours.shape), rtol=1e-9, atol=1e-12)


def test_scikit_learn_models_are_served_from_tables() -> None:
    """The version's explainer uses the tables where they apply, the recursive kernel
    where they do not."""
    from xserve.explainers.tree_shap import SklearnTreeShap

    x, y = _data("breast_cancer", 0.0)
    for make, tabulated in (
        (lambda: ensemble.RandomForestClassifier(10, max_depth=5, random_state=0), True),
        (lambda: ensemble.HistGradientBoostingClassifier(max_iter=10), False),
    ):
        estimator = make().fit(x, y)
        explainer = SklearnTreeShap(_FakeVersion(estimator))  # type: ignore[arg-type]
        assert (explainer.tables is not None) == tabulated
        # float64 thresholds (histogram boosting): the float64 recursive kernel, not shap
        assert explainer.kernel is not None
        total = explainer.explain(x[:50])
        gap = total.base + total.values.sum(axis=1) - explainer.model_output(x[:50])
        assert np.abs(gap).max() <= RTOL


class _FakeVersion:
    """What SklearnTreeShap reads of a model version."""

    def __init__(self, estimator: Any) -> None:
        self.runtime = type("Runtime", (), {"native": estimator})()
        self.task = "classification"
        self.name, self.version = "m", "1"
