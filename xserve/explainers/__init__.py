"""Explainers: exact inline methods (TreeSHAP, LinearSHAP) and reason codes."""

from xserve.explainers.base import Attribution, InlineExplainer, register_inline
from xserve.explainers.build import build_inline

__all__ = ["Attribution", "InlineExplainer", "build_inline", "register_inline"]
