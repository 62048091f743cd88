"""Fair-lending figures against a hand computation."""

from __future__ import annotations

import pytest

from tests.server import DEMO_MODELS
from xserve.outcomes.fairness import fairness, segment_names
from xserve.outcomes.pairs import Arm, Joined
from xserve.repository.version import load_version


def test_rates_impact_ratio_and_equal_opportunity_equal_a_hand_computation() -> None:
    model = load_version("credit-risk", "1", DEMO_MODELS / "credit-risk" / "1")  # adverse: 1
    arm, joined = Arm("1"), Joined()
    # (segment digest, decided, outcome) for each decision
    cases = (
        [("d-a", 0, 0)] * 16 + [("d-a", 1, 1)] * 3 + [("d-a", 1, 0)] * 1   # A: 4/20 adverse
        + [("d-b", 0, 0)] * 9 + [("d-b", 1, 0)] * 6 + [("d-b", 1, 1)] * 5  # B: 11/20 adverse
        + [("d-c", 0, 0)] * 3                                              # C: 0/3 adverse
    )  # fmt: skip
    for i, (digest, decided, outcome) in enumerate(cases):
        key = (f"r{i}", 0)
        arm.keys.append(key)
        arm.predictions.append(decided)
        arm.probabilities.append([1.0 - decided, float(decided)])
        joined.outcomes[key] = outcome
        joined.segments[key] = {"group": digest}
    arm.keys.append(("no-outcome", 0))  # decided, but no outcome: not counted
    arm.predictions.append(1)
    arm.probabilities.append([0.0, 1.0])
    assert segment_names(joined) == ["group"]
    rows = fairness(arm, joined, model, "group", {"d-a": "A", "d-b": "B"})
    assert [r.segment for r in rows] == ["other #1", "A", "B"]  # most favoured first
    c, a, b = rows
    assert (c.n, a.n, b.n) == (3, 20, 20)
    assert (c.adverse_rate, a.adverse_rate, b.adverse_rate) == (0.0, 0.2, 0.55)
    # approval 1.0 (C, the most favoured), 0.8 (A), 0.45 (B)
    assert a.impact_ratio == pytest.approx(0.8) and not a.flagged
    assert b.impact_ratio == pytest.approx(0.45) and b.flagged
    # TPR: favourable outcomes (0) decided 0: C 3/3, A 16/17, B 9/15
    assert c.tpr == 1.0 and a.tpr == pytest.approx(16 / 17) and b.tpr == pytest.approx(0.6)
    assert a.tpr_gap == pytest.approx(16 / 17 - 1.0) and b.tpr_gap == pytest.approx(-0.4)


def test_regressors_get_no_fairness_rows() -> None:
    model = load_version("diabetes", "1", DEMO_MODELS / "diabetes" / "1")
    assert fairness(Arm("1"), Joined(), model, "group", {}) == []
