"""Model-agnostic explanation methods, run as jobs: the interface, and lookup by name.

A method explains one row at a time and returns a *record*: plain JSON holding
everything about that row for every model output (e.g. KernelSHAP values for
every class). Records are what the explanation cache stores, so choosing the
class to report (``?class=``) and the number of reason codes happen when a
record is rendered, and a cached row serves every such choice.

Records are rendered by a classmethod, so the API renders cached records
without importing shap, lime or alibi.
"""

from __future__ import annotations

import importlib.util
import json
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError

from xserve.errors import InvalidInput, NotExplainable
from xserve.explainers.reasons import class_index
from xserve.explainers.registry import JOB_METHODS
from xserve.registry import UnknownName
from xserve.serving.outcome import Explanation

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = [
    "JobExplainer",
    "MethodParams",
    "Record",
    "canonical_params",
    "explained_output",
    "job_method",
    "method_info",
]

Record = dict[str, Any]
Row = npt.NDArray[np.float64]


class MethodParams(BaseModel):
    """Base of every method's parameters: unknown keys are the caller's mistake."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class JobExplainer(ABC):
    """One method built for one model version and one set of parameters."""

    method: ClassVar[str]
    Params: ClassVar[type[MethodParams]]
    requires: ClassVar[str | None] = None
    """A module that must be importable, else the method is unavailable."""
    install_hint: ClassVar[str] = ""

    @classmethod
    def unavailable(cls) -> str | None:
        """Why the method cannot run in this installation, or None."""
        if cls.requires and importlib.util.find_spec(cls.requires) is None:
            return f"{cls.method} needs {cls.requires}, which is not installed: {cls.install_hint}"
        return None

    @classmethod
    def unsupported(cls, model: ModelVersion) -> str | None:
        """Why the method cannot explain ``model``, or None."""
        if model.background is None:
            return (
                f"{cls.method} needs the version's background sample "
                "(background.csv or the manifest's 'background')"
            )
        return None

    @abstractmethod
    def __init__(self, model: ModelVersion, params: MethodParams) -> None: ...

    @abstractmethod
    def explain_row(self, row: Row) -> Record:
        """The record of one row (shape (features,)); blocking, seconds at most."""

    @classmethod
    @abstractmethod
    def render(
        cls, model: ModelVersion, record: Record, label: str | None, reasons: int
    ) -> Explanation:
        """The explanation JSON of one record, as the API answers it."""


def job_method(name: str) -> type[JobExplainer]:
    """The job method called ``name``; an unknown name is the caller's mistake."""
    try:
        return JOB_METHODS.get(name)
    except UnknownName as exc:
        raise InvalidInput(f"method: {name!r} is not one of {exc.known}") from None


def parse_params(cls: type[JobExplainer], raw: Any) -> MethodParams:
    """Validate a request's ``params`` for ``cls``; errors name the parameter."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidInput("params: expected a JSON object")
    try:
        return cls.Params.model_validate(raw)
    except ValidationError as exc:
        details = "; ".join(
            f"params.{'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise InvalidInput(f"{cls.method}: {details}") from None


def canonical_params(params: MethodParams) -> str:
    """One text per parameter set, defaults included, so equal requests share cache keys."""
    return json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def check_offered(cls: type[JobExplainer], model: ModelVersion) -> None:
    """Raise NotExplainable unless ``model`` offers and supports ``cls`` here."""
    if cls.method not in model.manifest.explain.methods:
        raise NotExplainable(
            f"model {model.name!r} version {model.version} does not offer {cls.method} "
            f"(explain.methods in xserve.yaml: {list(model.manifest.explain.methods)})"
        )
    reason = cls.unavailable() or cls.unsupported(model)
    if reason is not None:
        raise NotExplainable(f"model {model.name!r} version {model.version}: {reason}")


def explained_output(model: ModelVersion, outputs: list[float], label: str | None) -> int:
    """The output a record reports: ``?class=`` when given, else the predicted class."""
    if model.task == "regression":
        return 0
    chosen = class_index(model, label)
    return chosen if chosen is not None else int(np.argmax(outputs))


def method_info(model: ModelVersion) -> list[dict[str, Any]]:
    """The model's job methods for its metadata: availability and default parameters."""
    info = []
    for name in model.manifest.explain.methods:
        cls = job_method(name)
        reason = cls.unavailable() or cls.unsupported(model)
        entry: dict[str, Any] = {"method": name, "available": reason is None}
        if reason is not None:
            entry["unavailable"] = reason
        entry["params"] = cls.Params().model_dump(mode="json")
        info.append(entry)
    return info
