"""Independent drift figures for the tests: PSI and the KS statistic written out by hand."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

BINS = 10
EPSILON = 1e-4


def hand_psi(reference: Iterable[Any], current: Iterable[Any]) -> float:
    """PSI as documented: bins cut at the reference's deciles (right-closed), shares floored
    at 1e-4, sum of (q - p) * ln(q / p)."""
    ref = [float(v) for v in reference]
    cur = [float(v) for v in current]
    edges = sorted(set(np.quantile(ref, [i / BINS for i in range(1, BINS)]).tolist()))

    def shares(values: list[float]) -> list[float]:
        counts = [0] * (len(edges) + 1)
        for v in values:
            i = 0
            while i < len(edges) and v > edges[i]:
                i += 1
            counts[i] += 1
        return [max(c / len(values), EPSILON) for c in counts]

    p, q = shares(ref), shares(cur)
    return sum((b - a) * math.log(b / a) for a, b in zip(p, q, strict=True))


def hand_ks(reference: Iterable[Any], current: Iterable[Any]) -> float:
    """The largest gap between the two empirical distribution functions."""
    a, b = sorted(float(v) for v in reference), sorted(float(v) for v in current)
    return max(
        abs(bisect.bisect_right(a, v) / len(a) - bisect.bisect_right(b, v) / len(b))
        for v in set(a) | set(b)
    )
