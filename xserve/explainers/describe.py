"""A version's metadata with its explanations: what ``GET /v1/models/{name}`` shows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xserve.explainers.methods import method_info
from xserve.explainers.onnx_trees import BackgroundUse

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = ["describe_explain", "describe_version", "explain_instead", "no_inline_message"]


def describe_explain(model: ModelVersion) -> dict[str, Any]:
    """The ``explain`` section: the inline explainer, and each job method with its
    availability and default parameters."""
    inline = model.inline
    out: dict[str, Any] = {
        "inline": inline.method if inline else None,
        "inline_output": inline.output if inline else None,
        "inline_unavailable": model.inline_error,
    }
    background = getattr(inline, "background_use", None)
    if isinstance(background, BackgroundUse):  # interventional: the reference rows it takes
        out["inline_background"] = background.describe()
    out["methods"] = list(model.manifest.explain.methods)
    out["job_methods"] = method_info(model)
    return out


def describe_version(model: ModelVersion) -> dict[str, Any]:
    """``model.describe()`` with the ``explain`` section after ``artifact_sha256``."""
    out: dict[str, Any] = {}
    for key, value in model.describe().items():
        out[key] = value
        if key == "artifact_sha256":
            out["explain"] = describe_explain(model)
    return out


def explain_instead(model: ModelVersion) -> str:
    """How ``model`` can be explained without an inline explainer: its job methods, or why
    none of them can run."""
    info = method_info(model)
    methods = [m["method"] for m in info if m["available"]]
    if methods:
        return f"use POST /v1/models/{model.name}/explain with method {', '.join(methods)}"
    reasons = list(dict.fromkeys(m["unavailable"] for m in info)) or ["explain.methods is empty"]
    return f"no explanation job method can explain it either ({'; '.join(reasons)})"


def no_inline_message(model: ModelVersion) -> str:
    """Why ``explain=true`` cannot be answered for ``model``, and what can explain it."""
    return (
        f"model {model.name!r} version {model.version} has no inline explainer "
        f"({model.inline_error}); {explain_instead(model)}"
    )
