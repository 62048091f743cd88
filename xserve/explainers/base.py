"""Inline (exact, fast) explainers: the interface (``registry`` lists the implementations).

An explainer returns attributions for every model output at once, shape
(rows, features, outputs): one output per class for classifiers (a binary
margin model's single log-odds output is expanded to ``[-m, m]``, the log-odds
of class 0 and of class 1) and one output for regressors. Choosing the class
to report and the reason codes happen afterwards, the same way for every
method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = [
    "Attribution",
    "InlineExplainer",
    "OutputSpace",
    "Tensor3",
    "binary_margin",
]

Tensor3 = npt.NDArray[np.float64]
OutputSpace = Literal["margin", "probability", "value"]


@dataclass
class Attribution:
    method: str
    output: OutputSpace
    values: Tensor3
    """(rows, features, outputs)."""
    base: npt.NDArray[np.float64]
    """(rows, outputs): base + values.sum(axis=1) is the model output."""


def binary_margin(
    values: npt.NDArray[np.float64], base: npt.NDArray[np.float64]
) -> tuple[Tensor3, npt.NDArray[np.float64]]:
    """Expand a single log-odds output (rows, features) into both classes' log-odds."""
    v = np.stack([-values, values], axis=-1)
    b = np.stack([-base, base], axis=-1)
    return v, b


class InlineExplainer(ABC):
    """An exact attribution method built once per model version."""

    method: ClassVar[str]
    output: OutputSpace

    @classmethod
    @abstractmethod
    def supports(cls, model: ModelVersion) -> bool:
        """Whether this implementation can explain ``model`` exactly."""

    @abstractmethod
    def __init__(self, model: ModelVersion) -> None: ...

    @abstractmethod
    def explain(self, x: npt.NDArray[np.float64]) -> Attribution:
        """Attributions for every row of ``x`` and every model output."""

    @abstractmethod
    def model_output(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The model's own output (rows, outputs) in this explainer's output space."""
