"""The report's plots as PNG bytes (matplotlib's Agg renderer, no display, no pyplot state)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from xserve.monitoring.drift import PSI_DRIFT, PSI_WARN

__all__ = ["distributions", "feature_histograms", "importance", "psi_bars", "reason_bars"]

Array = npt.NDArray[np.float64]
BLUE, ORANGE, GREY = "#1f5f99", "#e08a1e", "#8c8c8c"
STATUS_COLOURS = {"ok": "#3a8f4b", "warn": "#e0b01e", "drift": "#c0392b", None: GREY}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _height(n: int) -> float:
    return max(2.2, 0.32 * n + 1.0)


def importance(names: Sequence[str], background: Array | None, traffic: Array | None) -> bytes:
    """Mean |SHAP| per feature, background and served traffic side by side."""
    order = np.argsort(background if background is not None else traffic)  # type: ignore[arg-type]
    fig = Figure(figsize=(7, _height(len(names))))
    ax = fig.subplots()
    y = np.arange(len(names))
    width = 0.4 if background is not None and traffic is not None else 0.8
    if background is not None:
        ax.barh(
            y + (width / 2 if traffic is not None else 0),
            background[order],
            width,
            color=BLUE,
            label="background",
        )
    if traffic is not None:
        ax.barh(
            y - (width / 2 if background is not None else 0),
            traffic[order],
            width,
            color=ORANGE,
            label="served traffic",
        )
    ax.set_yticks(y, [names[i] for i in order])
    ax.set_xlabel("mean |SHAP| (adverse output)")
    ax.legend(loc="lower right")
    return _png(fig)


def reason_bars(features: Sequence[str], listed: Sequence[int], principal: Sequence[int]) -> bytes:
    fig = Figure(figsize=(7, _height(len(features))))
    ax = fig.subplots()
    y = np.arange(len(features))[::-1]
    ax.barh(y, listed, color=BLUE, label="listed among the reasons")
    ax.barh(y, principal, color=ORANGE, label="principal reason")
    ax.set_yticks(y, list(features))
    ax.set_xlabel("explained decisions")
    ax.legend(loc="lower right")
    return _png(fig)


def psi_bars(
    names: Sequence[str], values: Sequence[float | None], statuses: Sequence[str | None]
) -> bytes:
    fig = Figure(figsize=(7, _height(len(names))))
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    ax.barh(y, [v or 0.0 for v in values], color=[STATUS_COLOURS.get(s, GREY) for s in statuses])
    ax.axvline(PSI_WARN, color=STATUS_COLOURS["warn"], linestyle="--", label=f"warn {PSI_WARN}")
    ax.axvline(PSI_DRIFT, color=STATUS_COLOURS["drift"], linestyle="--", label=f"drift {PSI_DRIFT}")
    ax.set_yticks(y, list(names))
    ax.set_xlabel("PSI, served traffic against background")
    ax.legend(loc="lower right")
    return _png(fig)


def distributions(series: Sequence[tuple[str, Array]], xlabel: str) -> bytes:
    """Overlaid density histograms on common bins (prediction distributions)."""
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    finite = [s[~np.isnan(s)] for _, s in series]
    pooled = np.concatenate([s for s in finite if s.size] or [np.zeros(1)])
    bins = np.histogram_bin_edges(pooled, bins=30).tolist()
    colours = [BLUE, ORANGE, "#3a8f4b", "#8e44ad", GREY]
    for i, ((label, _), values) in enumerate(zip(series, finite, strict=True)):
        if values.size:
            ax.hist(
                values,
                bins=bins,
                density=True,
                alpha=0.55,
                label=f"{label} (n={values.size})",
                color=colours[i % len(colours)],
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend()
    return _png(fig)


def feature_histograms(names: Sequence[str], background: Array, traffic: Array) -> bytes:
    """Background against traffic for a few features (the most drifted)."""
    cols = min(2, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(7, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    for ax, j, name in zip(axes, range(len(names)), names, strict=False):
        ref, cur = background[:, j], traffic[:, j]
        pooled = np.concatenate([ref[~np.isnan(ref)], cur[~np.isnan(cur)]])
        bins = np.histogram_bin_edges(pooled, bins=20).tolist() if pooled.size else 10
        ax.hist(
            ref[~np.isnan(ref)], bins=bins, density=True, alpha=0.55, color=BLUE, label="background"
        )
        ax.hist(
            cur[~np.isnan(cur)], bins=bins, density=True, alpha=0.55, color=ORANGE, label="traffic"
        )
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
