"""scikit-learn estimators: skops files by default, pickles only when trusted."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import is_classifier

from xserve.errors import ModelLoadError
from xserve.repository.manifest import Manifest
from xserve.runtimes.base import Matrix, Runtime

__all__ = ["SKOPS_SAFE_PREFIXES", "SklearnRuntime"]

# Classes from these libraries are accepted in a skops file; anything else
# (user classes, and any function: builtins.exec is one) needs `trusted: true`.
SKOPS_SAFE_PREFIXES = ("sklearn.", "numpy.", "scipy.", "xgboost.", "builtins.", "collections.")


def _is_safe_class(name: str) -> bool:
    """A class, never a function, from a library in SKOPS_SAFE_PREFIXES.

    A stored function is called at predict time (a FunctionTransformer's
    ``func``), so builtins.exec or a library function that runs a command
    would run code chosen by whoever wrote the file.
    """
    if not name.startswith(SKOPS_SAFE_PREFIXES):
        return False
    module, _, attr = name.rpartition(".")
    try:
        return isinstance(getattr(importlib.import_module(module), attr), type)
    except (ImportError, AttributeError):
        return False


def _load_skops(path: Path, trusted: bool) -> Any:
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=path)
    refused = [t for t in untrusted if not _is_safe_class(t)]
    if refused and not trusted:
        raise ModelLoadError(
            f"{path}: refuses to load functions, or types outside scikit-learn/numpy/scipy: "
            f"{refused}; set 'trusted: true' in xserve.yaml if you trust this file"
        )
    return sio.load(path, trusted=untrusted)


def _load_pickle(path: Path, trusted: bool) -> Any:
    if not trusted:
        raise ModelLoadError(
            f"{path}: joblib/pickle files can run code when loaded; "
            "use skops, or set 'trusted: true' in xserve.yaml"
        )
    if path.suffix == ".joblib":
        import joblib

        return joblib.load(path)
    with path.open("rb") as fh:
        return pickle.load(fh)


class SklearnRuntime(Runtime):
    flavor = "sklearn"
    extensions = (".skops", ".joblib", ".pkl", ".pickle")

    def __init__(self, artifact: Path, manifest: Manifest, threads: int = 1) -> None:
        super().__init__(artifact, manifest, threads)
        try:
            if artifact.suffix == ".skops":
                model = _load_skops(artifact, manifest.trusted)
            else:
                model = _load_pickle(artifact, manifest.trusted)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{artifact}: not a loadable scikit-learn model: {exc}") from None
        if not hasattr(model, "predict"):
            raise ModelLoadError(f"{artifact}: {type(model).__name__} has no predict()")
        self.model = model
        self.task = "classification" if is_classifier(model) else "regression"
        if self.task == "classification":
            if not hasattr(model, "predict_proba"):
                raise ModelLoadError(
                    f"{artifact}: classifier {type(model).__name__} has no predict_proba()"
                )
            self.classes = [c.item() if isinstance(c, np.generic) else c for c in model.classes_]
        names = getattr(model, "feature_names_in_", None)
        # Fitted on a DataFrame: feed it one, or sklearn warns on every call.
        self._wants_frame = names is not None
        self.feature_names = [str(n) for n in names] if names is not None else None
        if self.feature_names is None and hasattr(model, "n_features_in_"):
            self._n_features: int | None = int(model.n_features_in_)
        else:
            self._n_features = None

    @property
    def native(self) -> Any:
        return self.model

    @property
    def n_features(self) -> int | None:
        return len(self.feature_names) if self.feature_names is not None else self._n_features

    def _input(self, x: Matrix) -> Any:
        return pd.DataFrame(x, columns=self.feature_names, copy=False) if self._wants_frame else x

    def predict(self, x: Matrix) -> Matrix:
        if self.task == "classification":
            return np.asarray(self.model.predict_proba(self._input(x)), dtype=np.float64)
        return np.asarray(self.model.predict(self._input(x)), dtype=np.float64).reshape(len(x))
