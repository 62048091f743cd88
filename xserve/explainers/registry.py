"""The explainer registries: inline (exact) explainers and job methods, by name.

Built-ins are import strings, loaded on first use; plugins come from entry points:
``[project.entry-points."xserve.explainers"]`` ``<method> = "pkg.mod:JobExplainerClass"``
for job methods, ``[project.entry-points."xserve.inline_explainers"]`` ``<name> =
"pkg.mod:InlineExplainerClass"`` for inline ones (tried after the built-ins by
``explain.inline: auto``, or by their ``method`` name). This module imports no
explainer, so the manifest can check method names against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xserve.registry import Registry

if TYPE_CHECKING:
    from xserve.explainers.base import InlineExplainer
    from xserve.explainers.methods import JobExplainer

__all__ = ["BUILTIN_JOB_METHODS", "INLINE_EXPLAINERS", "JOB_METHODS"]

JOB_METHODS: Registry[type[JobExplainer]] = Registry(
    "method",
    "xserve.explainers",
    {
        "kernel_shap": "xserve.explainers.kernel_shap:KernelShap",
        "lime": "xserve.explainers.lime:Lime",
        "anchors": "xserve.explainers.anchors:Anchors",
    },
)
BUILTIN_JOB_METHODS = ("kernel_shap", "lime", "anchors")
"""Every job method xserve ships, in the order the metadata lists them (the default
``explain.methods``)."""

# Order matters: explain.inline auto takes the first implementation that supports a model.
INLINE_EXPLAINERS: Registry[type[InlineExplainer]] = Registry(
    "inline explainer",
    "xserve.inline_explainers",
    {
        "linear_shap": "xserve.explainers.linear_shap:LinearShap",
        "onnx_tree_shap": "xserve.explainers.onnx_trees:OnnxTreeShap",
        "xgboost_tree_shap": "xserve.explainers.tree_shap:XGBoostTreeShap",
        "lightgbm_tree_shap": "xserve.explainers.lightgbm_shap:LightGBMTreeShap",
        "sklearn_tree_shap": "xserve.explainers.tree_shap:SklearnTreeShap",
    },
)
