"""The runtime interface every model flavor implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from xserve.repository.manifest import Manifest

__all__ = ["Matrix", "Runtime", "Task", "sigmoid", "softmax"]

Matrix = npt.NDArray[np.float64]
Task = Literal["classification", "regression"]


def sigmoid(z: Matrix) -> Matrix:
    """A margin (log-odds) as a probability, for the boosters' logistic links."""
    out: Matrix = 1.0 / (1.0 + np.exp(-z))
    return out


def softmax(z: Matrix) -> Matrix:
    """Rows of per-class margins as probabilities (shifted by the row's maximum, so no
    exp overflows)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: Matrix = e / e.sum(axis=1, keepdims=True)
    return out


class Runtime(ABC):
    """A loaded model artifact that turns a float matrix into model outputs.

    ``predict`` returns class probabilities of shape (n, classes) for a
    classifier and values of shape (n,) for a regressor; labels are derived by
    the data plane so every flavor reports them the same way.
    """

    flavor: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]] = ()
    """Artifact file endings this runtime claims when the manifest names no flavor."""

    task: Task
    feature_names: list[str] | None = None
    """Feature names carried by the artifact itself, if any."""
    classes: list[Any] | None = None
    """Class labels carried by the artifact itself, in output order, if any."""

    def __init__(self, artifact: Path, manifest: Manifest, threads: int = 1) -> None:
        self.artifact = artifact
        self.manifest = manifest
        self.threads = threads

    @property
    @abstractmethod
    def native(self) -> Any:
        """The underlying library object (for explainers that read the model)."""

    @property
    def n_features(self) -> int | None:
        return len(self.feature_names) if self.feature_names is not None else None

    @abstractmethod
    def predict(self, x: Matrix) -> Matrix:
        """Probabilities (n, classes) for classifiers, values (n,) for regressors."""
