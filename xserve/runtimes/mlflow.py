"""MLflow models of any flavor, run through ``mlflow.pyfunc`` (needs the ``mlflow`` extra).

Scikit-learn, XGBoost and LightGBM models deployed from MLflow are converted to their
native runtimes (so TreeSHAP works); this runtime serves everything else.

What a pyfunc model outputs is up to its author, so the task is decided by this rule:

* **classification** needs class probabilities: the model object inside the pyfunc wrapper
  (``unwrap_python_model()`` for a custom ``PythonModel``, else ``get_raw_model()``) must
  have a ``predict_proba(model_input)`` (or ``predict_proba(context, model_input)``)
  method returning an (n, classes) array. Its ``classes_`` attribute, else the manifest's
  ``classes``, names the columns. A manifest saying ``task: classification`` for a model
  without ``predict_proba`` is refused at load: ``predict``'s labels alone cannot give
  probabilities, nor attributions for a class.
* **regression** otherwise: ``predict`` must return one number per row.

Without ``task`` in the manifest, a model with ``predict_proba`` is a classifier.

The artifact is an MLflow model folder, or a registry URI ``models:/NAME/VERSION``
downloaded at load (the tracking server comes from ``MLFLOW_TRACKING_URI``). An alias
(``models:/NAME@ALIAS``) is refused there: it moves, and a version folder must mean one
model for good; ``xserve sync`` follows aliases by deploying what they point to.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xserve.errors import ModelLoadError
from xserve.repository.manifest import Manifest
from xserve.runtimes.base import Matrix, Runtime, Task

__all__ = ["INSTALL_HINT", "MlflowRuntime", "input_columns"]

INSTALL_HINT = "pip install 'xserve[mlflow]'"
_PINNED_URI = re.compile(r"^models:/[^@/]+/\d+/?$")

# MLflow column types xserve can feed from its numeric inputs: (feature type, numpy dtype).
COLUMN_TYPES: dict[str, tuple[str, str]] = {
    "double": ("numeric", "float64"),
    "float": ("numeric", "float32"),
    "long": ("integer", "int64"),
    "integer": ("integer", "int32"),
    "boolean": ("boolean", "bool"),
}


def input_columns(model_meta: Any) -> list[tuple[str, str]] | None:
    """(name, MLflow type) of each named input column of an ``mlflow.models.Model``'s
    signature, or None when it has no column-based signature."""
    schema = model_meta.get_input_schema()
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    return [
        (str(name), getattr(t, "name", str(t)))
        for name, t in zip(schema.input_names(), schema.input_types(), strict=True)
    ]


def _call(method: Callable[..., Any], context: Any, frame: pd.DataFrame) -> Any:
    """Call ``predict_proba`` the way its author wrote it: with the pyfunc context first
    (MLflow's ``PythonModel.predict`` convention) or with the input alone."""
    if "context" in inspect.signature(method).parameters:
        return method(context, frame)
    return method(frame)


class MlflowRuntime(Runtime):
    flavor = "mlflow"

    def __init__(self, artifact: Path, manifest: Manifest, threads: int = 1) -> None:
        super().__init__(artifact, manifest, threads)
        if not manifest.trusted:
            # Loading a pyfunc unpickles code for most flavors (custom python models,
            # cloudpickled estimators): the same rule as for pickle artifacts.
            raise ModelLoadError(
                f"{artifact}: an MLflow model runs its own code when loaded; set "
                "'trusted: true' in xserve.yaml if you trust it (the MLflow plugin does, "
                "for the models it deploys from your registry)"
            )
        try:
            import mlflow.pyfunc
        except ImportError:
            raise ModelLoadError(
                f"{artifact}: flavor mlflow needs the mlflow package: {INSTALL_HINT}"
            ) from None
        if manifest.artifact.startswith("models:/"):
            artifact = self._download(manifest.artifact)
        if not (artifact / "MLmodel").is_file():
            raise ModelLoadError(f"{artifact}: not an MLflow model folder (no MLmodel file)")
        try:
            self.model = mlflow.pyfunc.load_model(str(artifact))
        except Exception as exc:
            raise ModelLoadError(f"{artifact}: not a loadable MLflow model: {exc}") from None
        columns = input_columns(self.model.metadata)
        self.feature_names = [name for name, _ in columns] if columns else None
        self._dtypes = [COLUMN_TYPES.get(t, ("", "object"))[1] for _, t in columns or []]
        self._proba_owner, self._context, self._proba = self._find_predict_proba()
        self.task = self._task(artifact, manifest)
        if self.task == "classification":
            classes = getattr(self._proba_owner, "classes_", None)
            if classes is not None:
                self.classes = [c.item() if isinstance(c, np.generic) else c for c in classes]
            elif manifest.classes is None:
                raise ModelLoadError(
                    f"{artifact}: a classifier needs its class labels: give the model a "
                    "'classes_' attribute or list 'classes' in xserve.yaml"
                )

    def _download(self, uri: str) -> Path:
        """Fetch a registry version into a folder that lives as long as this runtime
        (a pyfunc may read its files at predict time); it becomes ``self.artifact``."""
        import mlflow.artifacts

        if not _PINNED_URI.match(uri):
            raise ModelLoadError(
                f"artifact {uri}: expected models:/NAME/VERSION; an alias or stage moves, "
                "so deploy what it points to instead (xserve sync NAME --alias A)"
            )
        folder = Path(tempfile.mkdtemp(prefix="xserve-mlflow-"))
        weakref.finalize(self, shutil.rmtree, folder, True)
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder))
        except Exception as exc:
            raise ModelLoadError(f"artifact {uri}: cannot download it: {exc}") from None
        self.artifact = Path(local)
        return self.artifact

    def _find_predict_proba(self) -> tuple[Any, Any, Callable[..., Any] | None]:
        """The unwrapped model, the context to call it with and its ``predict_proba``."""
        impl = getattr(self.model, "_model_impl", None)
        candidates: list[tuple[Any, Any]] = []
        with contextlib.suppress(Exception):  # raises unless a custom PythonModel
            candidates.append((self.model.unwrap_python_model(), getattr(impl, "context", None)))
        with contextlib.suppress(Exception):  # raises when the flavor exposes no raw model
            candidates.append((self.model.get_raw_model(), None))
        for owner, context in candidates:
            method = getattr(owner, "predict_proba", None)
            if callable(method):
                return owner, context, method
        return None, None, None

    def _task(self, artifact: Path, manifest: Manifest) -> Task:
        if manifest.task == "classification" and self._proba is None:
            raise ModelLoadError(
                f"{artifact}: task is classification, but the MLflow model has no "
                "predict_proba(): give the python model a predict_proba(model_input) "
                "returning class probabilities, or set 'task: regression' to serve "
                "predict()'s output as values"
            )
        if manifest.task is not None:
            return manifest.task
        return "classification" if self._proba is not None else "regression"

    @property
    def native(self) -> Any:
        return self.model

    def _frame(self, x: Matrix) -> pd.DataFrame:
        names = self.feature_names or [f.name for f in self.manifest.features or []]
        if len(names) != x.shape[1]:
            raise ValueError(f"the MLflow model takes {len(names)} columns, got {x.shape[1]}")
        frame = pd.DataFrame(x, columns=names)
        categories = {f.name: f.categories for f in self.manifest.features or [] if f.categories}
        for j, name in enumerate(names):
            if name in categories:  # the model was trained on the category text
                cats = categories[name]
                frame[name] = [cats[int(v)] if v == v else None for v in x[:, j]]
                continue
            dtype = self._dtypes[j] if j < len(self._dtypes) else "object"
            # MLflow enforces the signature: an int64 column refuses float64 values. A
            # missing value (NaN) has no integer form, so such a column stays float.
            whole = not (np.issubdtype(dtype, np.integer) and np.isnan(x[:, j]).any())
            if dtype != "object" and whole:
                frame[name] = x[:, j].astype(dtype)
        return frame

    def predict(self, x: Matrix) -> Matrix:
        frame = self._frame(x)
        if self.task == "classification":
            assert self._proba is not None  # checked at load
            out = np.asarray(_call(self._proba, self._context, frame), dtype=np.float64)
            if out.ndim != 2 or out.shape[0] != len(x):
                raise ValueError(f"predict_proba returned shape {out.shape}, not (rows, classes)")
            return out
        values = np.asarray(self.model.predict(frame), dtype=np.float64)
        if values.size != len(x):
            raise ValueError(f"predict returned shape {values.shape}, not one value per row")
        return values.reshape(len(x))
