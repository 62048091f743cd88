"""Runtimes by flavor name: the built-ins, and third-party ones from entry points.

A plugin declares ``[project.entry-points."xserve.runtimes"]`` ``<flavor> =
"package.module:RuntimeClass"``; the entry point's name is the flavor.
"""

from __future__ import annotations

from pathlib import Path

from xserve.errors import ManifestError
from xserve.registry import Registry, UnknownName
from xserve.runtimes.base import Runtime

__all__ = ["ENTRY_POINT_GROUP", "RUNTIMES", "flavors", "get_runtime", "infer_flavor"]

ENTRY_POINT_GROUP = "xserve.runtimes"
RUNTIMES: Registry[type[Runtime]] = Registry(
    "flavor",
    ENTRY_POINT_GROUP,
    {
        "onnx": "xserve.runtimes.onnx:OnnxRuntime",
        "sklearn": "xserve.runtimes.sklearn:SklearnRuntime",
        "xgboost": "xserve.runtimes.xgboost:XGBoostRuntime",
        "lightgbm": "xserve.runtimes.lightgbm:LightGBMRuntime",
        "mlflow": "xserve.runtimes.mlflow:MlflowRuntime",
    },
    optional={
        "mlflow": ("mlflow", "pip install 'xserve[mlflow]'"),
        "lightgbm": ("lightgbm", "pip install lightgbm"),
    },
)


def flavors() -> list[str]:
    return sorted(RUNTIMES.names())


def get_runtime(flavor: str) -> type[Runtime]:
    try:
        return RUNTIMES.get(flavor)
    except UnknownName as exc:
        raise ManifestError(exc.message) from None


def infer_flavor(artifact: Path) -> str:
    if (artifact / "MLmodel").is_file():  # an MLflow model folder
        return "mlflow"
    name = artifact.name.lower()
    for flavor in RUNTIMES.names():
        if any(name.endswith(ext) for ext in RUNTIMES.get(flavor).extensions):
            return flavor
    raise ManifestError(f"cannot infer the flavor of {artifact.name}; set 'flavor'")
