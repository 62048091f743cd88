"""Fair-lending figures of one version per segment (ECOA / Reg B, the four-fifths rule).

Over the version's decisions whose outcomes carry the segment:

- the adverse-decision rate (the share decided as the adverse class);
- the adverse impact ratio: the segment's approval rate (1 - adverse rate) over the
  most favoured segment's, flagged below 0.8;
- equal opportunity: the true-positive rate (the share of applicants whose outcome was
  favourable that the model decided favourably), and its difference to the most
  favoured segment's.

Segment values are recorded only as keyed digests; ``labels`` maps the digests of the
values an operator names back to them, and any other value is shown as ``other #k``.
Only aggregates leave this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xserve.explainers.reasons import adverse_index
from xserve.outcomes.pairs import Arm, Joined
from xserve.repository.version import ModelVersion

__all__ = ["FOUR_FIFTHS", "SegmentFigures", "fairness", "segment_names"]

FOUR_FIFTHS = 0.8


@dataclass(frozen=True)
class SegmentFigures:
    segment: str
    n: int
    adverse_rate: float
    impact_ratio: float | None
    """Approval rate over the most favoured segment's (None when that one approves none)."""
    flagged: bool
    """Impact ratio below the four-fifths rule."""
    tpr: float | None
    """Share of favourable outcomes decided favourably (None: no favourable outcome)."""
    tpr_gap: float | None
    """``tpr`` minus the most favoured segment's."""


def segment_names(joined: Joined) -> list[str]:
    return sorted({name for segments in joined.segments.values() for name in segments})


def fairness(
    arm: Arm, joined: Joined, model: ModelVersion, name: str, labels: dict[str, str]
) -> list[SegmentFigures]:
    """Figures per value of segment ``name`` (most favoured first); [] for a regressor."""
    if model.task != "classification" or not model.classes:
        return []
    adverse = str(model.classes[adverse_index(model)])
    groups: dict[str, list[tuple[bool, bool]]] = {}
    for i, key in enumerate(arm.keys):
        digest = joined.segments.get(key, {}).get(name)
        if digest is None or key not in joined.outcomes:
            continue
        decided_adverse = str(arm.predictions[i]) == adverse
        was_favourable = str(joined.outcomes[key]) != adverse
        groups.setdefault(str(digest), []).append((decided_adverse, was_favourable))
    others = sorted(d for d in groups if d not in labels)
    named = {d: labels.get(d) or f"other #{others.index(d) + 1}" for d in groups}
    rates = {}
    for digest, pairs in groups.items():
        decided = np.array([p[0] for p in pairs])
        favourable = np.array([p[1] for p in pairs])
        tpr = float((~decided[favourable]).mean()) if favourable.any() else None
        rates[digest] = (len(pairs), float(decided.mean()), tpr)
    if not rates:
        return []
    best = max(rates, key=lambda d: 1.0 - rates[d][1])
    best_approval, best_tpr = 1.0 - rates[best][1], rates[best][2]
    out = []
    for digest in sorted(rates, key=lambda d: rates[d][1]):
        n, adverse_rate, tpr = rates[digest]
        ratio = (1.0 - adverse_rate) / best_approval if best_approval > 0 else None
        gap = tpr - best_tpr if tpr is not None and best_tpr is not None else None
        flagged = ratio is not None and ratio < FOUR_FIFTHS
        out.append(SegmentFigures(named[digest], n, adverse_rate, ratio, flagged, tpr, gap))
    return out
