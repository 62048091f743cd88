"""Per-row cost of xserve's TreeSHAP kernels against XGBoost's ``pred_contribs``.

Two boosters:

* ``credit-risk``: the demo model (300 trees of depth 6), read from a copy of
  ``models/credit-risk/1`` (the working tree is never written), rows from its background;
* ``depth-18``: ``reg:squarederror``, max_depth 18, eta 0.3, min_child_weight 0, lambda
  0.01, colsample_bynode 0.5, seed 1234, 4 rounds on ``make_regression(3000, 30,
  n_informative=30, noise=1.0, random_state=1240)`` plus ``40 sin(x0 x1) + 20 |x2 x3
  x4|``: paths over more than 12 distinct features, which the leaf tables do not take.

For each: the float64 recursive kernel (``path_shap``), the leaf tables where they fit
(what serves the credit model), and XGBoost's float32 ``pred_contribs`` on one thread
(as xserve runs small batches), each timed on one row at a time (a lone request) and on
a batch of rows; the best of ``--rounds`` interleaved rounds, in microseconds a row.
Before timing, every kernel's values are checked against ``pred_contribs`` (to a few
float32 steps of the output) and to add up to the margin (1e-5), or the script exits 1.

    .venv/bin/python bench/tree_kernel.py [--rounds 5] [--rows 200]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.datasets import make_regression

from xserve.explainers.leaf_tables import LeafTables, TooLarge
from xserve.explainers.path_shap import PathShap, expected_values
from xserve.explainers.tree_shap import xgboost_model

ROOT = Path(__file__).resolve().parent.parent
CREDIT = ROOT / "models" / "credit-risk" / "1"


def credit_risk() -> tuple[xgb.Booster, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(shutil.copytree(CREDIT, Path(tmp) / "credit-risk"))
        booster = xgb.Booster()
        booster.load_model(str(copy / "model.json"))
        rows = pd.read_csv(copy / "background.csv").to_numpy(dtype=np.float64)
    return booster, rows


def depth_18() -> tuple[xgb.Booster, np.ndarray]:
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
    }
    return xgb.train(params, xgb.DMatrix(x, y), 4), x


def per_row(fn: Callable[[np.ndarray], Any], rows: np.ndarray, one_by_one: bool) -> float:
    """Seconds a row: each row alone, or the rows as one batch."""
    start = time.perf_counter()
    if one_by_one:
        for i in range(len(rows)):
            fn(rows[i : i + 1])
    else:
        fn(rows)
    return (time.perf_counter() - start) / len(rows)


def check(name: str, values: np.ndarray, base: float, booster: xgb.Booster, x: np.ndarray) -> None:
    contribs = booster.predict(xgb.DMatrix(x), pred_contribs=True, validate_features=False).astype(
        np.float64
    )
    margin = booster.predict(xgb.DMatrix(x), output_margin=True, validate_features=False).astype(
        np.float64
    )
    scale = max(1.0, float(np.abs(values).sum(axis=1).max()))
    gap = float(np.max(np.abs(values - contribs[:, :-1]))) / scale
    additivity = float(
        np.max(np.abs(base + values.sum(axis=1) - margin) / np.maximum(1, np.abs(margin)))
    )
    print(f"  {name}: |ours - pred_contribs| / scale {gap:.1e}, additivity gap {additivity:.1e}")
    if gap > 1e-5 or additivity > 1e-5:
        print(f"  {name}: values disagree; not timing them", file=sys.stderr)
        sys.exit(1)


def bench(name: str, booster: xgb.Booster, x: np.ndarray, rounds: int, n: int) -> None:
    booster.set_param({"nthread": 1})
    ensemble, base_margin = xgboost_model(booster)
    base = float(base_margin[0] + expected_values(ensemble)[0])
    kernels: dict[str, Callable[[np.ndarray], Any]] = {}
    path = PathShap(ensemble)
    kernels["float64 kernel (path_shap)"] = path.shap_values
    try:
        kernels["leaf tables"] = LeafTables(ensemble).shap_values
    except TooLarge as exc:
        print(f"  leaf tables: not built ({exc})")

    def contribs(rows: np.ndarray) -> Any:
        return booster.predict(xgb.DMatrix(rows), pred_contribs=True, validate_features=False)

    rows = x[:n]
    print(
        f"{name}: {len(ensemble.roots)} trees, {len(ensemble.left)} nodes, depth {path.max_depth}"
    )
    for label, fn in kernels.items():
        check(label, fn(rows)[:, :, 0], base, booster, rows)  # also compiles the kernel
    kernels["XGBoost pred_contribs (float32, 1 thread)"] = contribs
    best: dict[tuple[str, bool], float] = {}
    for _ in range(rounds):  # interleaved, so a busy moment hits every kernel alike
        for label, fn in kernels.items():
            for one in (True, False):
                t = per_row(fn, rows, one)
                best[label, one] = min(best.get((label, one), np.inf), t)
    reference = "XGBoost pred_contribs (float32, 1 thread)"
    print(f"  {'per row, us':44s} {'one row':>10s} {'batch':>10s} {'ratio 1':>8s} {'ratio b':>8s}")
    for label in kernels:
        one, batch = best[label, True] * 1e6, best[label, False] * 1e6
        r1 = best[label, True] / best[reference, True]
        rb = best[label, False] / best[reference, False]
        print(f"  {label:44s} {one:10.1f} {batch:10.1f} {r1:8.2f} {rb:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    print("ratio: time a row / XGBoost pred_contribs' time a row (one row, batch)")
    bench("credit-risk", *credit_risk(), args.rounds, args.rows)
    bench("depth-18", *depth_18(), args.rounds, min(args.rows, 50))


if __name__ == "__main__":
    main()
