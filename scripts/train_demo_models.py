"""Train the xserve demo models and write them into a versioned model repository.

Produces ``<out>/<name>/1/`` for credit-risk (XGBoost, synthetic data), breast-cancer
and diabetes (scikit-learn, persisted with skops) and iris (ONNX). Each version folder
holds the artifact, a ``background.csv`` sample of the training data and an
``xserve.yaml`` manifest carrying the artifact's sha256. Only generated data and data
sets bundled with scikit-learn are used (no network access), and every step is seeded,
so re-running produces byte-identical files.

Usage::

    python scripts/train_demo_models.py [--out models]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# scikit-learn only tolerates a *missing* pyarrow; an installed but unimportable one
# (e.g. built for NumPy 2 next to NumPy 1.26) breaks ``import sklearn``. Hide it while
# importing, then un-hide it (sklearn later treats a sys.modules entry as the real module).
try:
    import pyarrow  # noqa: F401
except ImportError:
    sys.modules["pyarrow"] = None  # type: ignore[assignment]

import numpy as np
import numpy.typing as npt
import pandas as pd
import skops.io as sio
import xgboost as xgb
import yaml
from onnx.helper import make_opsetid
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import Ridge

if "pyarrow" in sys.modules and sys.modules["pyarrow"] is None:
    del sys.modules["pyarrow"]

Array = npt.NDArray[np.float64]
SEED = 20240601
N_CREDIT = 20_000
N_BACKGROUND = 200
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
METHODS = ["kernel_shap", "lime", "anchors"]

CREDIT_FEATURES: dict[str, tuple[str, str]] = {  # name -> (description, adverse-action reason)
    "age": ("Applicant age in years", "Age of applicant"),
    "annual_income": ("Gross annual income (USD)", "Income too low for the credit requested"),
    "debt_to_income": ("Monthly debt payments / monthly income", "Debt-to-income ratio too high"),
    "credit_utilization": ("Revolving balances / credit limits", "Credit utilization too high"),
    "num_open_accounts": ("Number of open credit accounts", "Too many open credit accounts"),
    "delinquencies_2y": ("30+ day delinquencies in 2 years", "Recent delinquency on an account"),
    "months_employed": ("Months with current employer", "Length of employment too short"),
    "loan_amount": ("Requested loan amount (USD)", "Loan amount too high relative to income"),
}
DIABETES_DESCRIPTIONS = {
    "age": "Age in years",
    "sex": "Sex as coded in the data set (1 or 2)",
    "bmi": "Body mass index",
    "bp": "Average blood pressure",
    "s1": "tc, total serum cholesterol",
    "s2": "ldl, low-density lipoproteins",
    "s3": "hdl, high-density lipoproteins",
    "s4": "tch, total cholesterol / HDL",
    "s5": "ltg, log of serum triglycerides level",
    "s6": "glu, blood sugar level",
}
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
TEXT: dict[str, tuple[str, str, str]] = {  # description, intended_use, limitations
    "credit-risk": (
        "Gradient-boosted trees estimating the probability that a credit applicant defaults.",
        "Demonstrating explanations and adverse-action reason codes for a credit model.",
        "Trained on synthetic data; demo only. Uses age, a protected attribute in many places.",
    ),
    "breast-cancer": (
        "Random forest classifying breast masses as malignant or benign from FNA image features.",
        "Demonstrating explanations of a tabular medical classifier on the Wisconsin data set.",
        "Small public research data set (569 samples); demo only, not for clinical use.",
    ),
    "diabetes": (
        "Ridge regression predicting diabetes disease progression one year after baseline.",
        "Demonstrating explanations of a linear regression model on raw clinical measurements.",
        "Small public data set (442 patients) and a linear model; demo only, not clinical.",
    ),
    "iris": (
        "Random forest exported to ONNX classifying iris flowers into three species.",
        "Demonstrating serving and explaining an ONNX multi-class classifier.",
        "Tiny textbook data set (150 samples); demo only.",
    ),
}


def make_credit_data(seed: int = SEED, n: int = N_CREDIT) -> tuple[Array, npt.NDArray[np.int64]]:
    """Generate synthetic credit applications; label 1 = default (adverse)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(21, 76, n)
    income = np.clip(
        np.round(rng.lognormal(np.log(55_000) + 0.006 * (age - 40), 0.5), -2), 12_000, 400_000
    )
    dti = np.round(rng.beta(2.2, 6.0, n), 4)
    util = np.round(rng.beta(1.6, 3.2, n), 4)
    accounts = np.clip(rng.poisson(5.5, n), 0, 30)
    delinq = np.clip(rng.poisson(0.1 + 0.6 * util), 0, 10)
    employed = np.minimum(np.round(rng.gamma(2.0, 30.0 + 1.2 * (age - 21))), (age - 18) * 12)
    loan = np.clip(np.round(income * rng.uniform(0.05, 0.6, n), -2), 1_000, 50_000)
    logit = (  # plausible risk drivers plus unobserved noise
        -1.5
        + 4.0 * (dti - 0.27)
        + 2.5 * (util - 0.33)
        + 0.55 * delinq
        - 0.7 * np.log(income / 55_000)
        + 1.5 * (loan / income - 0.3)
        - 0.015 * (age - 45)
        - 0.004 * (employed - 60)
        + 0.08 * np.maximum(accounts - 8, 0)
        + rng.normal(0.0, 0.5, n)
    )
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    X = np.column_stack([age, income, dti, util, accounts, delinq, employed, loan])
    return X.astype(np.float64), y


def is_integral(column: Array) -> bool:
    return bool(np.all(column == np.round(column)))


def feature_spec(name: str, description: str, column: Array) -> dict[str, Any]:
    """Manifest entry; float bounds keep 6 significant digits (exact for these data)."""
    integral = is_integral(column)
    lo, hi = (float(f"{v:.6g}") if not integral else int(v) for v in (column.min(), column.max()))
    kind = "integer" if integral else "numeric"
    return {"name": name, "type": kind, "description": description, "min": lo, "max": hi}


def background_csv(X: Array, names: list[str], seed: int = SEED) -> str:
    """Seeded sample of training rows (all rows if fewer than N_BACKGROUND)."""
    rows = np.random.default_rng(seed).choice(len(X), size=min(N_BACKGROUND, len(X)), replace=False)
    frame = pd.DataFrame(X[np.sort(rows)], columns=names)
    for name in names:
        if is_integral(frame[name].to_numpy()):
            frame[name] = frame[name].astype(np.int64)
    return str(frame.to_csv(index=False, float_format="%.10g", lineterminator="\n"))


def skops_bytes(model: Any) -> bytes:
    """skops dump with object ids, file names and zip timestamps made deterministic.

    skops names arrays after ``id(obj)`` and stamps zip members with the current time;
    both are renumbered/fixed here so that identical models give identical bytes.
    """
    src = zipfile.ZipFile(io.BytesIO(sio.dumps(model)))
    schema = json.loads(src.read("schema.json"))
    ids: dict[int, int] = {}
    files: dict[str, str] = {}

    def renumber(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "__id__":
                    node[key] = ids.setdefault(value, len(ids) + 1)
                elif key == "file" and isinstance(value, str):
                    node[key] = files.setdefault(value, f"{len(files) + 1}{Path(value).suffix}")
                else:
                    renumber(value)
        elif isinstance(node, list):
            for item in node:
                renumber(item)

    renumber(schema)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            data = (
                json.dumps(schema, indent=2).encode() if name == "schema.json" else src.read(name)
            )
            dst.writestr(zipfile.ZipInfo(files.get(name, name), date_time=ZIP_EPOCH), data)
    return out.getvalue()


@dataclass
class Demo:
    """Everything the manifest needs besides the artifact itself."""

    flavor: str
    artifact: str
    X: Array
    names: list[str]
    descriptions: dict[str, str]
    target: dict[str, Any]  # classes + adverse_class, or adverse_direction
    score: str
    reason_codes: dict[str, str] | None = None


def write_version(folder: Path, name: str, demo: Demo) -> None:
    """Write background.csv and xserve.yaml next to the already written artifact."""
    (folder / "background.csv").write_text(background_csv(demo.X, demo.names))
    digest = hashlib.sha256((folder / demo.artifact).read_bytes()).hexdigest()
    task = "regression" if "adverse_direction" in demo.target else "classification"
    description, intended_use, limitations = TEXT[name]
    doc: dict[str, Any] = {
        "flavor": demo.flavor,
        "artifact": demo.artifact,
        "task": task,
        "description": description,
        "intended_use": intended_use,
        "limitations": limitations,
        "features": [
            feature_spec(name, demo.descriptions[name], column)
            for name, column in zip(demo.names, demo.X.T, strict=True)
        ],
        **demo.target,
        "background": "background.csv",
        # Anchors explain classifications only.
        "explain": {"inline": "auto", "methods": METHODS[: 3 if task == "classification" else 2]},
    }
    if demo.reason_codes:
        doc["reason_codes"] = demo.reason_codes
    doc["sha256"] = {demo.artifact: digest}
    (folder / "xserve.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, width=120))


def train_credit_risk(folder: Path) -> Demo:
    X, y = make_credit_data()
    frame = pd.DataFrame(X, columns=list(CREDIT_FEATURES))
    model = xgb.XGBClassifier(
        n_estimators=300,
        max_depth=6,
        learning_rate=0.05,
        n_jobs=1,
        random_state=0,
        objective="binary:logistic",
    )
    model.fit(frame, y)
    booster = model.get_booster()
    assert booster.feature_names == list(CREDIT_FEATURES)
    booster.save_model(str(folder / "model.json"))
    return Demo(
        "xgboost",
        "model.json",
        X,
        list(CREDIT_FEATURES),
        {k: v[0] for k, v in CREDIT_FEATURES.items()},
        {"classes": [0, 1], "adverse_class": 1},
        f"train accuracy {model.score(frame, y):.4f}, positive rate {y.mean():.4f}",
        reason_codes={k: v[1] for k, v in CREDIT_FEATURES.items()},
    )


def train_breast_cancer(folder: Path) -> Demo:
    data = load_breast_cancer()
    names = [name.replace(" ", "_") for name in data.feature_names]
    stats = {"mean": "Mean", "error": "Standard error of", "worst": "Worst (mean of 3 largest)"}
    descriptions = {}
    for raw, name in zip(data.feature_names, names, strict=True):
        stat = "error" if raw.endswith(" error") else raw.split()[0]
        measure = raw.removesuffix(" error").removeprefix(f"{stat} ")
        descriptions[name] = f"{stats[stat]} {measure} of the cell nuclei"
    model = RandomForestClassifier(n_estimators=100, max_depth=6, random_state=0, n_jobs=1)
    model.fit(data.data, data.target)  # numpy input: no feature_names_in_
    (folder / "model.skops").write_bytes(skops_bytes(model))
    classes = [str(c) for c in data.target_names]  # ["malignant", "benign"] = labels 0, 1
    return Demo(
        "sklearn",
        "model.skops",
        data.data,
        names,
        descriptions,
        {"classes": classes, "adverse_class": "malignant"},
        f"train accuracy {model.score(data.data, data.target):.4f}",
    )


def train_diabetes(folder: Path) -> Demo:
    data = load_diabetes(scaled=False)  # raw units keep explanations readable
    model = Ridge(alpha=1.0).fit(data.data, data.target)
    (folder / "model.skops").write_bytes(skops_bytes(model))
    return Demo(
        "sklearn",
        "model.skops",
        data.data,
        list(data.feature_names),
        DIABETES_DESCRIPTIONS,
        {"adverse_direction": "higher"},
        f"train R^2 {model.score(data.data, data.target):.4f}",
    )


def train_iris(folder: Path) -> Demo:
    data = load_iris()
    model = RandomForestClassifier(n_estimators=30, max_depth=4, random_state=0)
    model.fit(data.data, data.target)
    onx = convert_sklearn(  # explicit name: skl2onnx otherwise names the graph with a uuid4
        model,
        name="iris_random_forest",
        initial_types=[("input", FloatTensorType([None, 4]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # skl2onnx emits opset imports in set (hash-seed dependent) order; sort them.
    opsets = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    onx.opset_import.extend(make_opsetid(domain, version) for domain, version in opsets)
    (folder / "model.onnx").write_bytes(onx.SerializeToString())
    descriptions = {name: name.replace("_", " ").capitalize() + " in cm" for name in IRIS_FEATURES}
    return Demo(
        "onnx",
        "model.onnx",
        data.data,
        IRIS_FEATURES,
        descriptions,
        {"classes": [str(c) for c in data.target_names], "adverse_class": None},
        f"train accuracy {model.score(data.data, data.target):.4f}",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"), help="model repository root")
    args = parser.parse_args(argv)
    for name, train in [
        ("credit-risk", train_credit_risk),
        ("breast-cancer", train_breast_cancer),
        ("diabetes", train_diabetes),
        ("iris", train_iris),
    ]:
        folder = args.out / name / "1"
        folder.mkdir(parents=True, exist_ok=True)
        demo = train(folder)
        write_version(folder, name, demo)
        print(f"{name}: {demo.score} -> {folder}")


if __name__ == "__main__":
    main()
