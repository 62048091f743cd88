"""Turning a downloaded MLflow model folder into an xserve artifact and its manifest.

scikit-learn, XGBoost and LightGBM models are unwrapped into their native runtimes, so
TreeSHAP and linear SHAP explain them inline; any other model keeps its MLflow folder and runs
through pyfunc (flavor ``mlflow``), explained by job methods (KernelSHAP, LIME...).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from xserve.errors import ManifestError, ModelLoadError
from xserve.repository.manifest import Manifest, file_sha256
from xserve.repository.version import read_table
from xserve.runtimes import get_runtime
from xserve.runtimes.base import Runtime
from xserve.runtimes.mlflow import COLUMN_TYPES, input_columns

__all__ = ["FLAVOR_NAMES", "artifact_classes", "choose_flavor", "manifest_doc", "write_artifact"]

# What `--flavor` may say, and the xserve flavor each means.
FLAVOR_NAMES = {
    "sklearn": "sklearn",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "mlflow": "mlflow",
    "python_function": "mlflow",
    "pyfunc": "mlflow",
}


def choose_flavor(flavors: dict[str, Any], requested: str | None) -> str:
    """The xserve flavor for an MLmodel's flavors: native when it can be, else pyfunc."""
    if requested is not None:
        chosen = FLAVOR_NAMES.get(requested)
        if chosen is None:
            raise ManifestError(f"flavor {requested!r}: expected one of {sorted(FLAVOR_NAMES)}")
        needed = "python_function" if chosen == "mlflow" else chosen
        if needed not in flavors:
            raise ManifestError(f"flavor {requested!r}: the model has only {sorted(flavors)}")
        return chosen
    # the boosters first: their scikit-learn wrappers may carry both flavors
    for native in ("xgboost", "lightgbm", "sklearn"):
        if native in flavors:
            return native
    if "python_function" not in flavors:
        raise ManifestError(
            f"the model has no python_function flavor ({sorted(flavors)}): xserve cannot run it"
        )
    return "mlflow"


def write_artifact(flavor: str, model_dir: Path, staged: Path) -> str:
    """Write the model into ``staged`` in the form its runtime loads; the artifact name."""
    if flavor == "sklearn":
        import mlflow.sklearn
        import skops.io

        # skops, whatever MLflow stored (pickle, cloudpickle or skops): xserve loads it
        # without running code.
        skops.io.dump(mlflow.sklearn.load_model(str(model_dir)), staged / "model.skops")
        return "model.skops"
    if flavor == "xgboost":
        import mlflow.xgboost

        model = mlflow.xgboost.load_model(str(model_dir))
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        booster.save_model(str(staged / "model.json"))  # native JSON, read by shap too
        return "model.json"
    if flavor == "lightgbm":
        booster = _lightgbm_booster(model_dir)
        booster.save_model(str(staged / "model.txt"))  # the Booster text format
        return "model.txt"
    shutil.copytree(model_dir, staged / "model")
    return "model"


def _lightgbm_booster(model_dir: Path) -> Any:
    """The Booster of an MLflow lightgbm model: logged as a Booster or a scikit-learn
    wrapper (LGBMClassifier, LGBMRegressor...)."""
    import mlflow.lightgbm

    model = mlflow.lightgbm.load_model(str(model_dir))
    return model.booster_ if hasattr(model, "booster_") else model


def artifact_classes(flavor: str, model_dir: Path) -> list[Any] | None:
    """Class labels the unwrapped artifact loses: an LGBMClassifier trained on labels
    other than 0..n-1 (its booster numbers the classes); None when it keeps them."""
    if flavor != "lightgbm":
        return None
    import mlflow.lightgbm

    labels = getattr(mlflow.lightgbm.load_model(str(model_dir)), "classes_", None)
    if labels is None or list(labels) == list(range(len(labels))):
        return None
    return [_plain(c) for c in labels]


def _features(
    runtime: Runtime, columns: list[tuple[str, str]] | None, background: str | None, staged: Path
) -> list[dict[str, Any]] | None:
    """Features named as the model knows them, typed from the MLflow signature."""
    types = dict(columns or [])
    unusable = sorted(n for n, t in types.items() if t not in COLUMN_TYPES)
    if unusable:
        raise ManifestError(
            f"input columns {unusable} are not numbers or booleans: xserve's inputs are "
            "numeric (categorical features are sent as category numbers)"
        )
    names = runtime.feature_names or [n for n, _ in columns or []]
    if not names and background is not None:
        names = [str(c) for c in read_table(staged / background).columns]
    if not names:
        raise ManifestError(
            "the model carries no feature names and was logged without a signature: log it "
            "with a signature (or an input example), or give a background sample "
            "(-C background=PATH) whose header names the features in order"
        )
    return [
        {"name": n, "type": COLUMN_TYPES.get(types.get(n, "double"), ("numeric",))[0]}
        for n in names
    ]


def _plain(label: Any) -> Any:
    """A class label as YAML writes it plainly (numpy scalars are not)."""
    return label.item() if hasattr(label, "item") else label


def manifest_doc(
    staged: Path,
    flavor: str,
    artifact: str,
    model_meta: Any,
    background: str | None,
    classes: list[Any] | None,
) -> dict[str, Any]:
    """The version's ``xserve.yaml``, with task, features and classes written out."""
    # An MLflow folder runs its own code when loaded; deploying it from the registry is
    # the operator vouching for it (the conversion above already loaded it).
    trusted = flavor == "mlflow"
    doc: dict[str, Any] = {"flavor": flavor, "artifact": artifact}
    if trusted:
        doc["trusted"] = True
    probe = Manifest(artifact=artifact, trusted=trusted, classes=classes)
    try:
        runtime = get_runtime(flavor)(staged / artifact, probe)
    except ModelLoadError as exc:
        hint = "" if flavor == "mlflow" else " (--flavor mlflow serves it through pyfunc)"
        raise ModelLoadError(f"{exc.message}{hint}") from None
    doc["task"] = runtime.task
    doc["features"] = _features(runtime, input_columns(model_meta), background, staged)
    if runtime.task == "classification":
        labels = classes if classes is not None else runtime.classes
        if labels is not None:
            doc["classes"] = [_plain(c) for c in labels]
    if background is not None:
        doc["background"] = background
    if (staged / artifact).is_file():
        doc["sha256"] = {artifact: file_sha256(staged / artifact)}
    return doc
