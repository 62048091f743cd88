"""LIME conditions and Anchors rules in audit records hold no value or range of a
personal feature: ``34.75 < age <= 48.00`` bounds the age as surely as the value would."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import yaml

from tests.server import DEMO_MODELS
from xserve.audit.entry import decision_body, personal_digest
from xserve.explainers.anchors import Anchors, AnchorsParams
from xserve.explainers.lime import Lime, LimeParams
from xserve.explainers.methods import JobExplainer
from xserve.repository.version import ModelVersion, load_version
from xserve.serving.decision import Decision
from xserve.serving.outcome import Answer

KEY = b"rule-text-key"
PERSONAL = ("age", "annual_income")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    folder = tmp_path_factory.mktemp("cr") / "1"
    shutil.copytree(DEMO_MODELS / "credit-risk" / "1", folder)
    manifest = yaml.safe_load((folder / "xserve.yaml").read_text())
    for f in manifest["features"]:
        f["personal"] = f["name"] in PERSONAL
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest))
    return load_version("credit-risk", "1", folder)


def _recorded(model: ModelVersion, explainer: JobExplainer, row: np.ndarray) -> dict:
    explanation = type(explainer).render(model, explainer.explain_row(row), None, 4)
    answer = Answer(model.name, model.version, "r-1", explanations=[explanation])
    decision = Decision("explain", model, "r-1", None, row[None, :], answer)
    return decision_body(decision, KEY)


def _mentions_personal(text: str) -> bool:
    return any(re.search(rf"(?<![\w.]){name}(?![\w.])", text) for name in PERSONAL)


def test_lime_conditions_on_personal_features_are_digested(model: ModelVersion) -> None:
    assert model.background is not None
    row = model.background[3]
    explainer = Lime(model, LimeParams(num_samples=300, seed=1))
    shown = type(explainer).render(model, explainer.explain_row(row), None, 4)
    assert shown.conditions and re.search(r"\d", shown.conditions["age"])  # the caller sees it
    (recorded,) = _recorded(model, explainer, row)["explanations"]
    for name, rule in recorded["conditions"].items():
        if name in PERSONAL:
            assert rule == personal_digest(shown.conditions[name], KEY)
        else:
            assert rule == shown.conditions[name] and not _mentions_personal(rule)


def test_anchor_clauses_on_personal_features_are_digested(model: ModelVersion) -> None:
    assert model.background is not None
    params = AnchorsParams(threshold=0.9, coverage_samples=200, batch_size=50)
    explainer = Anchors(model, params)
    rows = model.background[:40]
    # a row whose anchor names a personal feature: the case that leaked
    for row in rows:
        shown = Anchors.render(model, explainer.explain_row(row), None, 4)
        assert shown.anchor is not None
        if any(_mentions_personal(clause) for clause in shown.anchor):
            break
    else:
        pytest.fail("no anchor among 40 rows names age or annual_income")
    (recorded,) = _recorded(model, explainer, row)["explanations"]
    assert len(recorded["anchor"]) == len(shown.anchor)
    for clause, kept in zip(shown.anchor, recorded["anchor"], strict=True):
        expected = personal_digest(clause, KEY) if _mentions_personal(clause) else clause
        assert kept == expected
    assert not any(_mentions_personal(c) for c in recorded["anchor"])
