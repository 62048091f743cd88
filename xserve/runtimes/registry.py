"""Runtimes registered by flavor name; third-party ones via entry points."""

from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points
from pathlib import Path

from xserve.errors import ManifestError
from xserve.runtimes.base import Runtime

__all__ = ["ENTRY_POINT_GROUP", "flavors", "get_runtime", "infer_flavor", "register"]

ENTRY_POINT_GROUP = "xserve.runtimes"
_RUNTIMES: dict[str, type[Runtime]] = {}
_entry_points_loaded = False
# Flavors whose runtime needs an optional extra: (module, how to install it).
_OPTIONAL = {"mlflow": ("mlflow", "pip install 'xserve[mlflow]'")}


def register(cls: type[Runtime]) -> type[Runtime]:
    """Class decorator: make ``cls`` the runtime for ``cls.flavor``."""
    _RUNTIMES[cls.flavor] = cls
    return cls


def _load_all() -> dict[str, type[Runtime]]:
    global _entry_points_loaded
    if not _entry_points_loaded:
        # Built-ins first so that a plugin may deliberately replace one.
        from xserve.runtimes import onnx, sklearn, xgboost  # noqa: F401

        # find_spec, not import: mlflow itself is imported only when a model needs it.
        if importlib.util.find_spec("mlflow") is not None:
            from xserve.runtimes import mlflow  # noqa: F401

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            register(ep.load())
        _entry_points_loaded = True
    return _RUNTIMES


def flavors() -> list[str]:
    return sorted(_load_all())


def get_runtime(flavor: str) -> type[Runtime]:
    runtimes = _load_all()
    try:
        return runtimes[flavor]
    except KeyError:
        if flavor in _OPTIONAL:
            module, hint = _OPTIONAL[flavor]
            raise ManifestError(
                f"flavor {flavor!r} needs the {module} package, which is not installed: {hint}"
            ) from None
        raise ManifestError(f"unknown flavor {flavor!r}; known: {sorted(runtimes)}") from None


def infer_flavor(artifact: Path) -> str:
    if (artifact / "MLmodel").is_file():  # an MLflow model folder
        return "mlflow"
    name = artifact.name.lower()
    for flavor, cls in _load_all().items():
        if any(name.endswith(ext) for ext in cls.extensions):
            return flavor
    raise ManifestError(f"cannot infer the flavor of {artifact.name}; set 'flavor'")
