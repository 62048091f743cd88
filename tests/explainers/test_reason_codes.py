"""Reason codes: the features that pushed toward the adverse outcome, most first.

Checked on hand-made versions (a real ModelVersion with no runtime: reason codes only
read the manifest, the features and the classes) and on the demo models, against a
ranking computed here from the attributions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.server import DEMO_MODELS
from xserve.errors import InvalidInput
from xserve.explainers import reasons
from xserve.explainers.attach import attach_inline
from xserve.explainers.base import Attribution
from xserve.explainers.reasons import DEFAULT_REASONS, adverse_index, class_index
from xserve.repository.manifest import Feature, Manifest
from xserve.repository.version import ModelVersion, load_version

NAMES = ["debt_ratio", "income", "age", "late_payments", "utilization", "tenure"]
DESCRIPTIONS = {"age": "applicant age in years", "tenure": "Months with the current employer"}
TEXTS = {"debt_ratio": "Debt-to-income ratio too high", "late_payments": "Recent late payments"}


def reason_codes(model: ModelVersion, values: np.ndarray, limit: int) -> list[dict[str, Any]]:
    """The reason codes as the JSON answer has them."""
    return msgspec.to_builtins(reasons.reason_codes(model, values, limit))  # type: ignore[no-any-return]


def render(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """One explanation as the JSON answer has it."""
    return msgspec.to_builtins(reasons.render(*args, **kwargs))  # type: ignore[no-any-return]


def fake_version(
    task: str = "classification",
    classes: list[Any] | None = None,
    reason_texts: dict[str, str] | None = None,
    classes_in_manifest: bool = True,
    **manifest: Any,
) -> ModelVersion:
    """A version as load_version builds it, minus the runtime (reason codes never use it)."""
    features = [Feature(name=n, description=DESCRIPTIONS.get(n)) for n in NAMES]
    classes = None if task == "regression" else (classes or [0, 1])
    raw: dict[str, Any] = {
        "artifact": "model.json",
        "task": task,
        "features": [f.model_dump(exclude_none=True) for f in features],
        "reason_codes": TEXTS if reason_texts is None else reason_texts,
        **manifest,
    }
    if classes is not None and classes_in_manifest:
        raw["classes"] = classes
    return ModelVersion(
        name="fake",
        version="1",
        path=Path("."),
        manifest=Manifest.model_validate(raw),
        runtime=None,  # type: ignore[arg-type]
        features=features,
        task=task,  # type: ignore[arg-type]
        classes=classes,
        digest="0" * 64,
    )


def expected_reasons(values: np.ndarray, limit: int, sign: float = 1.0) -> list[tuple[str, float]]:
    """Independent ranking: positive pushes only, largest first, ties in feature order."""
    push = [sign * float(v) for v in values]
    ranked = sorted((i for i in range(len(push)) if push[i] > 0), key=lambda i: -push[i])
    return [(NAMES[i], push[i]) for i in ranked[:limit]]


def pairs(codes: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [(c["feature"], c["contribution"]) for c in codes]


# Attributions with ties and zeros, as real models produce them.
value = st.one_of(
    st.sampled_from([0.0, -0.0, 0.25, -0.25, 1.0]),
    st.floats(-5, 5, allow_nan=False, allow_subnormal=False),
)
row = st.lists(value, min_size=len(NAMES), max_size=len(NAMES)).map(np.array)


@settings(max_examples=200, deadline=None)
@given(values=row, limit=st.integers(0, 8))
def test_ranking_is_positive_pushes_most_first(values: np.ndarray, limit: int) -> None:
    model = fake_version()
    codes = reason_codes(model, values, limit)
    assert pairs(codes) == expected_reasons(values, limit)
    contributions = [c["contribution"] for c in codes]
    assert all(c > 0 for c in contributions)
    assert contributions == sorted(contributions, reverse=True)
    assert len(codes) <= limit
    assert len({c["feature"] for c in codes}) == len(codes)


@settings(max_examples=100, deadline=None)
@given(values=row, limit=st.integers(0, 8))
def test_regression_adverse_direction(values: np.ndarray, limit: int) -> None:
    higher = reason_codes(fake_version("regression", adverse_direction="higher"), values, limit)
    lower = reason_codes(fake_version("regression", adverse_direction="lower"), values, limit)
    assert pairs(higher) == expected_reasons(values, limit, +1.0)
    # lower is adverse: the features that pulled the prediction down, by how much
    assert pairs(lower) == expected_reasons(values, limit, -1.0)
    assert all(c["contribution"] > 0 for c in lower)


def test_adverse_direction_defaults_to_higher() -> None:
    values = np.array([1.0, -2.0, 0.5, 0.0, -0.1, 3.0])
    model = fake_version("regression")
    assert model.manifest.adverse_direction == "higher"
    assert [c["feature"] for c in reason_codes(model, values, 4)] == ["tenure", "debt_ratio", "age"]
    lowered = fake_version("regression", adverse_direction="lower")
    assert [c["feature"] for c in reason_codes(lowered, values, 4)] == ["income", "utilization"]


def test_reason_text_from_the_manifest_or_a_readable_default() -> None:
    model = fake_version()
    values = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    codes = reason_codes(model, values, len(NAMES))
    texts = {c["feature"]: c["reason"] for c in codes}
    assert texts == {
        "debt_ratio": "Debt-to-income ratio too high",  # manifest
        "income": "Income",  # the name, readable
        "age": "Applicant age in years",  # the description, capitalised
        "late_payments": "Recent late payments",  # manifest
        "utilization": "Utilization",
        "tenure": "Months with the current employer",
    }
    bare = fake_version(reason_texts={})
    assert reason_codes(bare, values, 6)[3]["reason"] == "Late payments"


def test_no_positive_push_no_reasons() -> None:
    model = fake_version()
    assert reason_codes(model, np.zeros(len(NAMES)), 4) == []
    assert reason_codes(model, -np.arange(1.0, 7.0), 4) == []
    assert reason_codes(model, np.arange(1.0, 7.0), 0) == []


def _attribution(values: np.ndarray, output: str = "margin") -> Attribution:
    """One row of attributions (features, outputs)."""
    return Attribution("tree_shap", output, values[None, :, :], np.zeros((1, values.shape[1])))  # type: ignore[arg-type]


def test_render_shape_and_default_limit() -> None:
    assert DEFAULT_REASONS == 4
    model = fake_version(classes=["good", "bad"])
    v = np.array([0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    attribution = Attribution(
        "tree_shap", "margin", np.stack([-v, v], axis=-1)[None], np.array([[0.7, -0.7]])
    )
    out = render(model, attribution, 0, 1)
    assert out["method"] == "tree_shap" and out["output"] == "margin"
    assert out["class"] == "bad"
    assert out["base_value"] == -0.7
    assert list(out["values"]) == NAMES
    assert out["values"] == dict(zip(NAMES, v.tolist(), strict=True))
    assert pairs(out["reason_codes"]) == expected_reasons(v, 4)
    assert len(out["reason_codes"]) == 4
    assert len(render(model, attribution, 0, 1, reasons=2)["reason_codes"]) == 2
    assert len(render(model, attribution, 0, 1, reasons=10)["reason_codes"]) == 6


def test_binary_reasons_come_from_the_adverse_class_whichever_class_is_explained() -> None:
    v = np.array([0.6, -0.5, 0.4, -0.3, 0.2, -0.1])  # log-odds of class "bad"
    attribution = _attribution(np.stack([-v, v], axis=-1))

    default = fake_version(classes=["good", "bad"])  # adverse: the last class, "bad"
    assert adverse_index(default) == 1
    for explained in (0, 1):
        out = render(default, attribution, 0, explained)
        assert out["class"] == ["good", "bad"][explained]
        assert list(out["values"].values()) == attribution.values[0, :, explained].tolist()
        assert pairs(out["reason_codes"]) == expected_reasons(v, 4)

    flipped = fake_version(classes=["good", "bad"], adverse_class="good")
    assert adverse_index(flipped) == 0
    for explained in (0, 1):
        out = render(flipped, attribution, 0, explained)
        assert pairs(out["reason_codes"]) == expected_reasons(-v, 4)
        assert [c["feature"] for c in out["reason_codes"]] == ["income", "late_payments", "tenure"]


def test_multiclass_adverse_class_configured_or_last() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(len(NAMES), 3))
    attribution = _attribution(values, "probability")
    classes = ["low", "mid", "high"]
    last = fake_version(classes=classes)
    mid = fake_version(classes=classes, adverse_class="mid")
    for explained in range(3):
        assert pairs(render(last, attribution, 0, explained)["reason_codes"]) == expected_reasons(
            values[:, 2], 4
        )
        assert pairs(render(mid, attribution, 0, explained)["reason_codes"]) == expected_reasons(
            values[:, 1], 4
        )


def test_adverse_class_given_as_text_for_a_model_whose_labels_are_numbers() -> None:
    """`adverse_class: "0"` in YAML when the classes come from the artifact as 0 and 1."""
    model = fake_version(classes=[0, 1], adverse_class="0", classes_in_manifest=False)
    assert model.manifest.classes is None
    assert adverse_index(model) == 0
    v = np.array([0.6, -0.5, 0.4, -0.3, 0.2, -0.1])
    out = render(model, _attribution(np.stack([-v, v], axis=-1)), 0, 1)
    assert pairs(out["reason_codes"]) == expected_reasons(-v, 4)


def test_class_index() -> None:
    model = fake_version(classes=[0, 1])
    assert class_index(model, None) is None
    assert class_index(model, "1") == 1
    assert class_index(model, "0") == 0
    with pytest.raises(InvalidInput, match="9"):
        class_index(model, "9")
    assert class_index(fake_version("regression"), "1") is None
    named = fake_version(classes=["good", "bad"])
    assert class_index(named, "bad") == 1


# --- the demo models, end to end through their real explainers


def _manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEMO_MODELS / name / "1" / "xserve.yaml").read_text())


@pytest.mark.parametrize("name", ["credit-risk", "breast-cancer", "diabetes"])
def test_demo_model_reason_codes(name: str) -> None:
    model = attach_inline(load_version(name, "1", DEMO_MODELS / name / "1"))
    manifest = _manifest(name)
    assert model.inline is not None and model.background is not None
    x = model.background[:40]
    attribution = model.inline.explain(x)
    if manifest["task"] == "classification":
        adverse = manifest["classes"].index(manifest["adverse_class"])
    else:
        adverse = 0
    sign = -1.0 if manifest.get("adverse_direction") == "lower" else 1.0
    names = [f["name"] for f in manifest["features"]]
    descriptions = {f["name"]: f.get("description") for f in manifest["features"]}
    texts = manifest.get("reason_codes") or {}
    seen = 0
    n_outputs = attribution.values.shape[2]
    for i in range(len(x)):
        for explained in range(n_outputs):
            out = render(model, attribution, i, explained)
            push = sign * attribution.values[i, :, adverse]
            ranked = sorted((j for j in range(len(names)) if push[j] > 0), key=lambda j: -push[j])[
                :4
            ]
            assert [c["feature"] for c in out["reason_codes"]] == [names[j] for j in ranked]
            np.testing.assert_allclose(
                [c["contribution"] for c in out["reason_codes"]], [push[j] for j in ranked]
            )
            for c in out["reason_codes"]:
                described = descriptions[c["feature"]]
                want = texts.get(c["feature"]) or described[:1].upper() + described[1:]
                assert c["reason"] == want
            seen += len(out["reason_codes"])
    assert seen > 0
