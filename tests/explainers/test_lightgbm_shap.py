"""Exact TreeSHAP of LightGBM boosters against LightGBM's own ``pred_contrib``,
``shap.TreeExplainer`` and brute-force Shapley values.

The models split on categories (``cat_threshold`` bitsets) and on features with missing
values under each of LightGBM's missing types (NaN, None with ``use_missing=false``, Zero
with ``zero_as_missing``); rows are put on every kind of split threshold, one float64 and
one float32 step either side, with missing values, zeros within LightGBM's 1e-35 and
categories that are negative, fractional, huge or unseen. Values must agree to 1e-9 of
the output's scale (both sides sum in float64) and add up to the raw score to 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import shap
import yaml
from scipy.special import expit, softmax

from tests.explainers.test_path_shap import brute_force
from xserve.explainers.attach import attach_inline
from xserve.explainers.lightgbm_shap import (
    LightGBMTreeShap,
    as_lightgbm_reads,
    lightgbm_ensemble,
)
from xserve.explainers.path_shap import PathShap, exact_kernel, expected_values
from xserve.repository.version import ModelVersion, load_version

RTOL = 1e-5


def _data(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [
            rng.integers(0, 30, n).astype(float),  # categorical
            rng.normal(size=n),
            np.round(rng.normal(size=n), 1),  # repeated values: rows on thresholds
            rng.integers(0, 5, n).astype(float),
            rng.normal(size=n),
        ]
    )
    x[rng.random(n) < 0.08, 1] = np.nan
    x[rng.random(n) < 0.05, 0] = np.nan
    x[rng.random(n) < 0.1, 4] = 0.0
    y = (
        np.isin(x[:, 0], [0, 3, 6, 11, 17]).astype(float)
        + (np.nan_to_num(x[:, 1], nan=1.0) > 0)
        + x[:, 2] * (x[:, 3] > 2)
        + np.abs(x[:, 4])
    )
    return x, y


def _train(objective: str, **params: Any) -> tuple[lgb.Booster, np.ndarray]:
    x, y = _data()
    if objective == "binary":
        y = (y > np.median(y)).astype(int)
    elif objective == "multiclass":
        y = np.digitize(y, np.quantile(y, [1 / 3, 2 / 3]))
        params.setdefault("num_class", 3)
    elif objective == "poisson":
        y = np.round(y - y.min())
    all_params = {
        "objective": objective,
        "num_leaves": 15,
        "min_data_per_group": 5,
        "cat_smooth": 1,
        "max_cat_to_onehot": 2,
        "verbose": -1,
        "seed": 0,
        "num_threads": 1,
        **params,
    }
    data = lgb.Dataset(x, y, categorical_feature=[0], params={"verbose": -1})
    return lgb.train(all_params, data, num_boost_round=12), x


def _hard_rows(booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
    """Rows on the model's thresholds and a float64 and float32 step either side, with
    missing values, near-zeros and odd categories."""
    ens = lightgbm_ensemble(booster.dump_model())
    numeric = [
        n
        for n in np.flatnonzero(ens.left >= 0)
        if ens.categorical is None or not ens.categorical[n]
    ]
    rows = np.repeat(x[:50], 5, axis=0)
    for i, node in enumerate(numeric[: len(rows)]):
        t = float(ens.threshold[node])
        t32 = np.float32(t)
        candidates = (
            t,
            float(np.nextafter(t, -np.inf)),
            float(np.nextafter(t, np.inf)),
            float(np.nextafter(t32, np.float32(-np.inf))),
            float(np.nextafter(t32, np.float32(np.inf))),
        )
        rows[i, ens.feature[node]] = candidates[i % 5]
    rows[:12, 0] = [-0.5, -1, -1.5, 0.7, 2.9, 1e10, np.nan, 31, 64, 100, 3.0, 17.99]
    # zeros as LightGBM reads them, also next to its +-1e-35 thresholds
    rows[12:22, 4] = [0.0, 1e-36, -1e-36, 1e-34, np.nan, -0.0, 2e-35, -5e-36, -1e-35, 1e-35]
    rows[22:28, 1] = np.nan
    return rows


CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "binary": ("binary", {}),
    "binary-sigmoid": ("binary", {"sigmoid": 0.7}),
    "multiclass": ("multiclass", {}),
    "regression-zero-as-missing": ("regression", {"zero_as_missing": True}),
    "regression-no-missing": ("regression", {"use_missing": False}),
    "poisson": ("poisson", {}),
}


def _contribs(booster: lgb.Booster, rows: np.ndarray, k: int) -> np.ndarray:
    raw = np.asarray(booster.predict(rows, pred_contrib=True), dtype=np.float64)
    return raw.reshape(len(rows), k, -1).transpose(0, 2, 1)  # (rows, features + 1, outputs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_equal_to_pred_contrib_and_shap(case: str) -> None:
    objective, params = CASES[case]
    booster, x = _train(objective, **params)
    ens = lightgbm_ensemble(booster.dump_model())
    assert ens.categorical is not None and ens.categorical.any()
    if params.get("zero_as_missing"):
        assert ens.zero_missing is not None and ens.zero_missing.any()
    kernel, _ = exact_kernel(ens)
    rows = np.vstack([x[:200], _hard_rows(booster, x)])
    ours = kernel.shap_values(as_lightgbm_reads(rows))
    k = ens.n_outputs
    contribs = _contribs(booster, rows, k)
    raw = np.asarray(booster.predict(rows, raw_score=True), dtype=np.float64).reshape(len(rows), k)
    scale = max(1.0, float(np.abs(raw).max()))
    np.testing.assert_allclose(ours, contribs[:, :-1], rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_allclose(
        np.tile(expected_values(ens), (len(rows), 1)), contribs[:, -1], rtol=1e-9, atol=1e-12
    )
    gap = np.abs(expected_values(ens) + ours.sum(axis=1) - raw) / np.maximum(np.abs(raw), 1)
    assert gap.max() <= RTOL
    reference = shap.TreeExplainer(booster).shap_values(rows)
    reference = np.asarray(reference, dtype=np.float64).reshape(ours.shape)
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-9 * scale)


def test_small_booster_equals_brute_force() -> None:
    booster, x = _train("binary", num_leaves=6)
    ens = lightgbm_ensemble(booster.dump_model())
    rows = as_lightgbm_reads(_hard_rows(booster, x)[::4])
    kernel = PathShap(ens)
    np.testing.assert_allclose(kernel.shap_values(rows), brute_force(ens, rows), atol=1e-12)
    raw = booster.predict(rows, raw_score=True)
    np.testing.assert_allclose(kernel.predict(rows)[:, 0], raw, rtol=0, atol=0)


def test_wide_paths_take_the_recursive_kernel() -> None:
    """Leaves more than 12 distinct features deep: no tables, still LightGBM's values."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 30))
    y = np.sin(x[:, 0] * x[:, 1]) * 40 + x @ rng.normal(size=30) + rng.normal(size=4000)
    params = {
        "objective": "regression",
        "num_leaves": 400,
        "min_data_in_leaf": 2,
        "feature_fraction_bynode": 0.5,
        "verbose": -1,
        "num_threads": 1,
    }
    booster = lgb.train(params, lgb.Dataset(x, y, params={"verbose": -1}), 4)
    ens = lightgbm_ensemble(booster.dump_model())
    kernel, why = exact_kernel(ens)
    assert isinstance(kernel, PathShap) and why is not None
    ours = kernel.shap_values(as_lightgbm_reads(x[:60]))[:, :, 0]
    contribs = booster.predict(x[:60], pred_contrib=True)
    np.testing.assert_allclose(ours, contribs[:, :-1], rtol=1e-9, atol=1e-9 * np.abs(y).max())


def _version(folder: Path, booster: lgb.Booster, x: np.ndarray, artifact: str) -> ModelVersion:
    folder.mkdir(parents=True)
    if artifact.endswith(".json"):
        (folder / artifact).write_text(json.dumps(booster.dump_model()))
    else:
        booster.save_model(str(folder / artifact))
    names = [f"f{i}" for i in range(x.shape[1])]
    pd.DataFrame(x[:64], columns=names).to_csv(folder / "background.csv", index=False)
    manifest = {
        "flavor": "lightgbm",
        "artifact": artifact,
        "features": [{"name": n} for n in names],
        "background": "background.csv",
    }
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return attach_inline(load_version("lgb", "1", folder))


@pytest.mark.parametrize("artifact", ["model.txt", "model.json"])
@pytest.mark.parametrize("case", ["binary-sigmoid", "multiclass", "regression-zero-as-missing"])
def test_served_explanations_add_up(case: str, artifact: str, tmp_path: Path) -> None:
    objective, params = CASES[case]
    booster, x = _train(objective, **params)
    model = _version(tmp_path / "v", booster, x, artifact)
    assert model.inline is not None, model.inline_error
    assert isinstance(model.inline, LightGBMTreeShap)
    rows = _hard_rows(booster, x)
    a = model.inline.explain(rows)
    total = a.base + a.values.sum(axis=1)
    raw = np.asarray(booster.predict(rows, raw_score=True), dtype=np.float64)
    served = model.runtime.predict(rows)
    native = np.asarray(booster.predict(rows), dtype=np.float64)
    binary = served.ndim == 2 and native.ndim == 1
    np.testing.assert_allclose(served[:, -1] if binary else served, native, rtol=1e-12)
    if objective == "binary":
        assert a.output == "margin" and a.values.shape == (len(rows), x.shape[1], 2)
        log_odds = params.get("sigmoid", 1.0) * raw  # LightGBM's p = expit(sigmoid * raw)
        np.testing.assert_allclose(total, np.column_stack([-log_odds, log_odds]), atol=1e-9)
        np.testing.assert_allclose(expit(total[:, 1]), served[:, 1], rtol=1e-9)
    elif objective == "multiclass":
        assert a.output == "margin" and a.values.shape == (len(rows), x.shape[1], 3)
        np.testing.assert_allclose(total, raw, atol=1e-9)
        np.testing.assert_allclose(softmax(total, axis=1), served, rtol=1e-9)
    else:
        assert a.output == "value"
        np.testing.assert_allclose(total[:, 0], served, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("objective", ["binary", "multiclass"])
def test_random_forest_mode_explains_the_averaged_score(objective: str, tmp_path: Path) -> None:
    """boosting=rf: the prediction is the link of the trees' mean, while LightGBM's raw
    score and pred_contrib are their sum; the explanation is of the mean."""
    booster, x = _train(
        objective, boosting="rf", bagging_fraction=0.5, bagging_freq=1, num_leaves=8
    )
    assert booster.dump_model()["average_output"]
    model = _version(tmp_path / "v", booster, x, "model.txt")
    assert model.inline is not None, model.inline_error
    rows = _hard_rows(booster, x)
    a = model.inline.explain(rows)
    k = a.values.shape[2] if objective == "multiclass" else 1
    n_iterations = booster.current_iteration()
    contribs = _contribs(booster, rows, k) / n_iterations
    np.testing.assert_allclose(a.values[:, :, -k:], contribs[:, :-1], rtol=1e-9, atol=1e-12)
    total = a.base + a.values.sum(axis=1)
    proba = np.asarray(booster.predict(rows), dtype=np.float64)
    if objective == "binary":
        np.testing.assert_allclose(expit(total[:, 1]), proba, rtol=1e-9)
    else:
        np.testing.assert_allclose(softmax(total, axis=1), proba, rtol=1e-9)
