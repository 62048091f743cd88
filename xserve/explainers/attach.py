"""Giving a loaded version its inline explainer: the serving repository's load hook."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from xserve.explainers.build import build_inline

if TYPE_CHECKING:
    from xserve.repository.version import ModelVersion

__all__ = ["attach_inline"]


def attach_inline(model: ModelVersion) -> ModelVersion:
    """``model`` with its exact explainer built (or the reason there is none).

    For ``ModelRepository(on_load=[attach_inline])``; a version is frozen, so this
    returns a copy rather than changing the one loaded.
    """
    inline, error = build_inline(model)
    return dataclasses.replace(model, inline=inline, inline_error=error)
