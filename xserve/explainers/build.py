"""Choosing and checking a version's inline explainer when it loads."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from xserve.explainers.base import InlineExplainer
from xserve.explainers.registry import INLINE_EXPLAINERS
from xserve.runtimes.base import Matrix

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = ["ADDITIVITY_RTOL", "build_inline", "candidates", "check_additivity"]

log = logging.getLogger(__name__)
ADDITIVITY_RTOL = 1e-5
_CHECK_ROWS = 32


def check_additivity(explainer: InlineExplainer, x: Matrix) -> float:
    """Largest relative gap between base + sum(values) and the model's own output."""
    attribution = explainer.explain(x)
    total = attribution.base + attribution.values.sum(axis=1)
    expected = explainer.model_output(x)
    scale = np.maximum(np.abs(expected), 1.0)
    return float(np.max(np.abs(total - expected) / scale))


def candidates(method: str | None = None) -> list[type[InlineExplainer]]:
    """The inline explainers offering ``method`` (all of them for None), in registry order."""
    classes = [INLINE_EXPLAINERS.get(name) for name in INLINE_EXPLAINERS.names()]
    return [c for c in classes if method is None or c.method == method]


def build_inline(model: ModelVersion) -> tuple[InlineExplainer | None, str | None]:
    """The version's exact explainer, or None and the reason there is none.

    Every explainer is checked on background rows before it serves: one whose
    attributions do not add up to the model's output is refused, never served.
    """
    wanted = model.manifest.explain.inline
    if wanted == "none":
        return None, "inline explanations are turned off in xserve.yaml (explain.inline: none)"
    for cls in candidates(None if wanted == "auto" else wanted):
        if not cls.supports(model):
            continue
        try:
            explainer = cls(model)
            if model.background is not None:
                gap = check_additivity(explainer, model.background[:_CHECK_ROWS])
                if gap > ADDITIVITY_RTOL:
                    return None, f"{cls.method} failed its additivity check (gap {gap:.2e})"
        except Exception as exc:
            log.warning("%s for %s v%s failed: %s", cls.method, model.name, model.version, exc)
            return None, f"{cls.method} could not be built: {type(exc).__name__}: {exc}"
        return explainer, None
    method = "an exact inline explainer" if wanted == "auto" else wanted
    return None, (
        f"{method} is not available for this {model.flavor} model "
        f"({type(model.runtime.native).__name__}); use POST /v1/models/{model.name}/explain "
        "with a model-agnostic method such as kernel_shap"
    )
