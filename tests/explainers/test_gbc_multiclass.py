"""Multiclass GradientBoostingClassifier: exact TreeSHAP in log-odds per class.

The estimator holds one regression tree per class and stage (``estimators_[i, k]``);
its decision function is the init estimator's prior plus the learning rate times the
trees' sum, per class. References: Shapley values by brute force over every coalition
of the path-dependent game (small models), and the estimator's own
``decision_function`` (additivity to 1e-5 of the output's scale) and ``predict_proba``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
import yaml
from scipy.special import softmax
from sklearn import datasets, ensemble

from tests.explainers.test_path_shap import brute_force
from xserve.explainers.attach import attach_inline
from xserve.explainers.path_shap import PathShap
from xserve.explainers.tree_shap import SklearnTreeShap, gradient_boosting_model
from xserve.repository.version import ModelVersion, load_version

RTOL = 1e-5
CLASSES = ["barolo", "grignolino", "barbera"]


def _on_thresholds(estimator: ensemble.GradientBoostingClassifier, x: np.ndarray) -> np.ndarray:
    """Rows with features set on the trees' float64 thresholds and one float32 step either
    side (the trees compare float32 inputs with <=)."""
    rows = np.repeat(x[:20], 3, axis=0)
    splits = [
        (f, t)
        for stage in estimator.estimators_
        for tree in stage
        for f, t in zip(tree.tree_.feature, tree.tree_.threshold, strict=True)
        if f >= 0
    ]
    for i, (f, t) in enumerate(splits[: len(rows)]):
        t32 = np.float32(t)
        rows[i, f] = float(
            (t32, np.nextafter(t32, np.float32(-1e9)), np.nextafter(t32, 1e9))[i % 3]
        )
    return rows


def _version(folder: Path, estimator: object, x: np.ndarray, names: list[str]) -> ModelVersion:
    folder.mkdir(parents=True)
    sio.dump(estimator, folder / "model.skops")
    pd.DataFrame(x[:60], columns=names).to_csv(folder / "background.csv", index=False)
    manifest = {
        "artifact": "model.skops",
        "features": [{"name": n} for n in names],
        "background": "background.csv",
    }
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return attach_inline(load_version("wine", "1", folder))


@pytest.fixture(scope="module")
def wine() -> tuple[np.ndarray, np.ndarray, list[str]]:
    data = datasets.load_wine()
    names = [str(n).replace("/", "_") for n in data.feature_names]
    labels = np.asarray(CLASSES, dtype=object)[data.target]  # string classes
    return np.asarray(data.data, dtype=np.float64), labels, names


def test_small_model_equals_brute_force(wine: tuple[np.ndarray, np.ndarray, list[str]]) -> None:
    x, y, _ = wine
    x = x[:, [0, 6, 9, 12, 10]]  # five features: every coalition is enumerated
    estimator = ensemble.GradientBoostingClassifier(
        n_estimators=6, max_depth=3, learning_rate=0.3, random_state=0
    ).fit(x, y)
    ens, base = gradient_boosting_model(estimator)
    assert ens.n_outputs == 3 and len(ens.roots) == 18
    rows = np.vstack([x[::9], _on_thresholds(estimator, x)])
    ours = PathShap(ens).shap_values(rows)
    np.testing.assert_allclose(ours, brute_force(ens, rows), rtol=1e-9, atol=1e-12)
    total = base + ours.sum(axis=1)
    margin = estimator.decision_function(rows)
    assert np.max(np.abs(total - margin) / np.maximum(np.abs(margin), 1)) <= RTOL


def test_wine_model_serves_log_odds_per_class(
    wine: tuple[np.ndarray, np.ndarray, list[str]], tmp_path: Path
) -> None:
    """As a user deploys it: it used to get no inline explainer at all."""
    x, y, names = wine
    estimator = ensemble.GradientBoostingClassifier(n_estimators=60, random_state=0).fit(x, y)
    model = _version(tmp_path / "wine" / "1", estimator, x, names)
    assert model.inline is not None, model.inline_error
    assert isinstance(model.inline, SklearnTreeShap)
    assert (model.inline.method, model.inline.output) == ("tree_shap", "margin")
    assert model.classes == sorted(CLASSES)  # the estimator's class order
    rows = np.vstack([x, _on_thresholds(estimator, x)])
    a = model.inline.explain(rows)
    assert a.values.shape == (len(rows), x.shape[1], 3) and a.base.shape == (len(rows), 3)
    total = a.base + a.values.sum(axis=1)
    margin = estimator.decision_function(rows)
    assert np.max(np.abs(total - margin) / np.maximum(np.abs(margin), 1)) <= RTOL
    # the base is the prior in log-odds plus the trees' expected sum, the same for every row
    np.testing.assert_array_equal(a.base, np.tile(a.base[0], (len(rows), 1)))
    # ...and the served probabilities are the softmax of those log-odds
    np.testing.assert_allclose(softmax(total, axis=1), model.runtime.predict(rows), atol=1e-9)
    np.testing.assert_allclose(
        model.runtime.predict(rows), estimator.predict_proba(rows), rtol=0, atol=0
    )
    # a lone row is explained as in the batch
    one = model.inline.explain(rows[5:6])
    np.testing.assert_allclose(one.values, a.values[5:6], rtol=1e-12, atol=1e-12)


def test_a_row_dependent_init_estimator_is_refused(
    wine: tuple[np.ndarray, np.ndarray, list[str]],
) -> None:
    """Its prior would vary with the row: no constant base value, so no exact explainer."""
    x, y, _ = wine
    init = ensemble.RandomForestClassifier(5, max_depth=2, random_state=0)
    estimator = ensemble.GradientBoostingClassifier(n_estimators=5, init=init, random_state=0).fit(
        x, y
    )
    with pytest.raises(ValueError, match="depends on the row"):
        gradient_boosting_model(estimator)
