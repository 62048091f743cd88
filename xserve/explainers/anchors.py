"""Anchors: alibi's ``AnchorTabular``, a rule that holds the prediction in place.

From the optional ``anchors`` extra, pinned to alibi 0.9.4, its last Apache-2.0
release. An anchor explains the model's *prediction*: the rendered ``class``
is always the predicted one, whatever ``?class=`` asks for. Classifiers only.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from xserve.explainers.methods import JobExplainer, MethodParams, Record, Row
from xserve.serving.outcome import Explanation

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = ["Anchors", "AnchorsParams", "import_anchor_tabular"]


class AnchorsParams(MethodParams):
    threshold: float = Field(default=0.95, gt=0, lt=1)
    """Precision the anchor must reach."""
    delta: float = Field(default=0.1, gt=0, lt=1)
    tau: float = Field(default=0.15, gt=0, lt=1)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    coverage_samples: int = Field(default=10_000, ge=100, le=1_000_000)
    beam_size: int = Field(default=1, ge=1, le=20)
    max_anchor_size: int | None = Field(default=None, ge=1)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)


def _ray_stub() -> None:
    """Let ``import alibi`` succeed without ray.

    alibi 0.9.4 names ``DistributedExplainer`` in a ``Union`` at import time; without
    ray it is a placeholder object that typing rejects, and ``import alibi`` fails
    whenever shap is installed (no alibi release fixes this). Plain
    classes stand in for the ray-backed ones, which xserve never uses.
    """
    if "alibi.utils.distributed" in sys.modules or importlib.util.find_spec("ray") is not None:
        return
    stub = types.ModuleType("alibi.utils.distributed")

    class _NeedsRay:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError("distributed alibi explainers need ray, which xserve does not use")

    stub.DistributedExplainer = _NeedsRay  # type: ignore[attr-defined]
    stub.ActorPool = _NeedsRay  # type: ignore[attr-defined]
    sys.modules[stub.__name__] = stub


def import_anchor_tabular() -> Any:
    _ray_stub()
    from alibi.explainers import AnchorTabular

    return AnchorTabular


class Anchors(JobExplainer):
    method = "anchors"
    Params = AnchorsParams
    requires = "alibi"
    install_hint = "pip install 'xserve[anchors]'"

    @classmethod
    def unsupported(cls, model: ModelVersion) -> str | None:
        if model.task != "classification":
            return "anchors explain classifiers only"
        return super().unsupported(model)

    def __init__(self, model: ModelVersion, params: MethodParams) -> None:
        assert isinstance(params, AnchorsParams) and model.background is not None
        self.params = params
        self.predict = model.runtime.predict
        anchor_tabular = import_anchor_tabular()
        self.explainer = anchor_tabular(self._labels, model.feature_names, seed=params.seed)
        self.explainer.fit(model.background, disc_perc=(25, 50, 75))

    def _labels(self, x: Any) -> Any:
        return np.argmax(self.predict(np.asarray(x, dtype=np.float64)), axis=1)

    def explain_row(self, row: Row) -> Record:
        x = np.asarray(row, dtype=np.float64)
        outputs = np.asarray(self.predict(x[None, :]), dtype=np.float64).reshape(-1)
        p = self.params
        np.random.seed(p.seed)  # alibi samples with numpy's global generator
        exp = self.explainer.explain(
            x,
            threshold=p.threshold,
            delta=p.delta,
            tau=p.tau,
            batch_size=p.batch_size,
            coverage_samples=p.coverage_samples,
            beam_size=p.beam_size,
            max_anchor_size=p.max_anchor_size,
        )
        return {
            "outputs": outputs.tolist(),
            "anchor": [str(c) for c in exp.anchor],
            "precision": float(np.asarray(exp.precision).reshape(-1)[0]),
            "coverage": float(exp.coverage),
        }

    @classmethod
    def render(
        cls, model: ModelVersion, record: Record, label: str | None, reasons: int
    ) -> Explanation:
        k = int(np.argmax(record["outputs"]))
        return Explanation(
            cls.method,
            model.classes[k] if model.classes else k,
            anchor=record["anchor"],
            precision=record["precision"],
            coverage=record["coverage"],
        )
