"""The job methods on the demo models (XGBoost, scikit-learn, ONNX; binary, multiclass,
regression): KernelSHAP against shap called directly and against exact SHAP, LIME against
lime called directly, anchors, and parameter checking."""

from __future__ import annotations

import dataclasses
import re
from functools import cache
from pathlib import Path
from typing import Any

import lime.lime_tabular
import msgspec
import numpy as np
import pytest
import shap

from tests.plugin_support import install_plugin, run_with_plugin
from tests.server import DEMO_MODELS
from xserve.errors import InvalidInput, NotExplainable
from xserve.explainers.anchors import Anchors, AnchorsParams, import_anchor_tabular
from xserve.explainers.kernel_shap import KernelShap, KernelShapParams
from xserve.explainers.lime import Lime, LimeParams
from xserve.explainers.methods import (
    JobExplainer,
    MethodParams,
    Record,
    canonical_params,
    check_offered,
    job_method,
    method_info,
    parse_params,
)
from xserve.explainers.registry import BUILTIN_JOB_METHODS, JOB_METHODS
from xserve.repository.version import ModelVersion, load_version
from xserve.serving.outcome import Explanation

DEMOS = ["credit-risk", "breast-cancer", "diabetes", "iris"]  # xgboost, sklearn x2, onnx


@cache
def demo(name: str) -> ModelVersion:
    return load_version(name, "1", DEMO_MODELS / name / "1")


def outputs(model: ModelVersion, row: np.ndarray) -> np.ndarray:
    return np.asarray(model.runtime.predict(row[None, :]), dtype=np.float64).reshape(-1)


# -- KernelSHAP ------------------------------------------------------------------------


@pytest.mark.parametrize("name", DEMOS)
def test_kernel_shap_is_additive_and_equals_shap_called_directly(name: str) -> None:
    model = demo(name)
    assert model.background is not None
    params = KernelShapParams(nsamples=150, background=10, seed=7)
    explainer = KernelShap(model, params)
    direct = shap.KernelExplainer(model.runtime.predict, shap.kmeans(model.background, 10))
    for row in model.background[:3]:
        record = explainer.explain_row(row)
        values, base = np.array(record["values"]), np.array(record["base"])
        f = outputs(model, row)
        # base_value + sum(values) is the model's output, for every output (class)
        np.testing.assert_allclose(base + values.sum(axis=0), f, rtol=1e-5, atol=1e-9)
        np.random.seed(7)
        expected = np.asarray(
            direct.shap_values(row[None, :], nsamples=150, l1_reg=False, silent=True)
        ).reshape(values.shape)
        np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(base, np.atleast_1d(direct.expected_value), rtol=1e-9)


def test_kernel_shap_on_a_linear_model_equals_exact_shap() -> None:
    """With the whole background and every coalition, KernelSHAP is exact: for a linear
    model, interventional SHAP is w_i (x_i - mean_i), computed here from the coefficients."""
    model = demo("diabetes")
    assert model.background is not None
    weights = np.asarray(model.runtime.native.coef_, dtype=np.float64).reshape(-1)
    explainer = KernelShap(model, KernelShapParams(nsamples=2**10, background=1000))
    for row in model.background[:3]:
        record = explainer.explain_row(row)
        exact = weights * (row - model.background.mean(axis=0))
        np.testing.assert_allclose(np.array(record["values"])[:, 0], exact, rtol=1e-6, atol=1e-6)


def test_kernel_shap_rendering_reports_the_predicted_class_or_the_asked_one() -> None:
    model = demo("iris")
    assert model.background is not None
    record = KernelShap(model, KernelShapParams(nsamples=60, background=5)).explain_row(
        model.background[120]
    )
    predicted = int(np.argmax(record["outputs"]))
    default = msgspec.to_builtins(KernelShap.render(model, record, None, 2))
    assert default["class"] == model.classes[predicted] and default["output"] == "probability"
    assert set(default["values"]) == set(model.feature_names) and len(default["reason_codes"]) <= 2
    other = (predicted + 1) % 3
    chosen = msgspec.to_builtins(KernelShap.render(model, record, model.classes[other], 4))
    assert chosen["class"] == model.classes[other]
    total = chosen["base_value"] + sum(chosen["values"].values())
    assert total == pytest.approx(record["outputs"][other], rel=1e-5)


def test_kernel_shap_seed_and_background_summary() -> None:
    model = demo("breast-cancer")  # 30 features: coalitions are sampled, so the seed matters
    assert model.background is not None
    row = model.background[0]
    a = KernelShap(model, KernelShapParams(nsamples=100, background=8, seed=1)).explain_row(row)
    again = KernelShap(model, KernelShapParams(nsamples=100, background=8, seed=1)).explain_row(row)
    b = KernelShap(model, KernelShapParams(nsamples=100, background=8, seed=2)).explain_row(row)
    assert a == again
    assert a["values"] != b["values"]
    sampled = KernelShap(model, KernelShapParams(nsamples=100, background=8, summarize="sample"))
    assert sampled.explainer.data.data.shape == (8, 30)
    assert KernelShap(
        model, KernelShapParams(nsamples=100, background=8)
    ).explainer.data.weights.sum() == pytest.approx(1.0)


# -- LIME ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DEMOS)
def test_lime_is_deterministic_and_equals_lime_called_directly(name: str) -> None:
    model = demo(name)
    assert model.background is not None
    params = LimeParams(num_samples=400, seed=3)
    row = model.background[5]
    record = Lime(model, params).explain_row(row)
    assert Lime(model, params).explain_row(row) == record  # same request, same answer
    regression = model.task == "regression"
    direct = lime.lime_tabular.LimeTabularExplainer(
        model.background,
        mode="regression" if regression else "classification",
        feature_names=model.feature_names,
        random_state=3,
    )
    k = 0 if regression else 1
    exp = direct.explain_instance(
        row, model.runtime.predict, labels=(k,), num_features=len(model.features), num_samples=400
    )
    label = 1 if regression else k  # lime's own as_list() reads a regression under label 1
    expected = dict(exp.as_map()[label])
    values = np.array(record["values"])[:, k]
    np.testing.assert_allclose(values, [expected[i] for i in range(len(values))], rtol=1e-9)
    assert record["intercept"][k] == pytest.approx(exp.intercept[label])
    assert record["score"][k] == pytest.approx(exp.score)
    rendered = msgspec.to_builtins(Lime.render(model, record, None, 4))
    assert {"intercept", "score", "values", "conditions", "reason_codes"} <= set(rendered)
    assert rendered["output"] == ("value" if regression else "probability")
    assert any(f in rendered["conditions"][f] for f in model.feature_names)


def test_lime_seed_changes_the_neighbourhood() -> None:
    model = demo("credit-risk")
    assert model.background is not None
    row = model.background[0]
    a = Lime(model, LimeParams(num_samples=300, seed=1)).explain_row(row)
    b = Lime(model, LimeParams(num_samples=300, seed=2)).explain_row(row)
    assert a["values"] != b["values"]


# -- anchors ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["credit-risk", "iris"])
def test_anchors_give_a_rule_with_precision_and_coverage(name: str) -> None:
    model = demo(name)
    assert model.background is not None
    params = AnchorsParams(threshold=0.9, seed=0)
    explainer = Anchors(model, params)
    row = model.background[3]
    record = explainer.explain_row(row)
    assert record == Anchors(model, params).explain_row(row)  # seeded: reproducible
    rendered = msgspec.to_builtins(Anchors.render(model, record, None, 4))
    assert rendered["method"] == "anchors" and rendered["anchor"]
    assert all(any(f in c for f in model.feature_names) for c in rendered["anchor"])
    assert 0.9 <= rendered["precision"] <= 1.0 and 0.0 < rendered["coverage"] <= 1.0
    predicted = int(np.argmax(outputs(model, row)))
    assert rendered["class"] == model.classes[predicted]
    # Checked independently: on the background rows where the rule holds (the row itself
    # among them), the model mostly predicts the same class, and they are about as
    # common as the coverage says.
    holds = np.array([_holds(rendered["anchor"], model.feature_names, r) for r in model.background])
    assert _holds(rendered["anchor"], model.feature_names, row)
    same = np.argmax(model.runtime.predict(model.background[holds]), axis=1) == predicted
    assert same.mean() >= 0.8
    assert abs(holds.mean() - rendered["coverage"]) < 0.15
    assert type(explainer.explainer) is import_anchor_tabular()


_CONDITION = re.compile(
    r"^(?:(?P<lo>[-\d.e]+) < )?(?P<name>\w+) (?P<op><=|>|<|>=) (?P<v>[-\d.e]+)$"
)


def _holds(anchor: list[str], names: list[str], row: np.ndarray) -> bool:
    """Whether ``row`` satisfies every condition of an anchor such as ``0.1 < x <= 0.3``."""
    for condition in anchor:
        m = _CONDITION.match(condition)
        assert m is not None, condition
        x = row[names.index(m["name"])]
        v = float(m["v"])
        if m["lo"] is not None and not x > float(m["lo"]):
            return False
        ok = {"<=": x <= v, ">": x > v, "<": x < v, ">=": x >= v}[m["op"]]
        if not ok:
            return False
    return True


def test_anchors_refuse_regression_and_report_a_missing_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    diabetes = demo("diabetes")
    assert Anchors.unsupported(diabetes) == "anchors explain classifiers only"
    credit = demo("credit-risk")
    assert Anchors.unavailable() is None
    assert all(m["available"] for m in method_info(credit))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "alibi" else real(n, *a)
    )
    info = {m["method"]: m for m in method_info(credit)}
    assert info["kernel_shap"]["available"] and not info["anchors"]["available"]
    assert "pip install 'xserve[anchors]'" in info["anchors"]["unavailable"]
    with pytest.raises(NotExplainable, match=r"xserve\[anchors\]"):
        check_offered(Anchors, credit)


# -- parameters and methods ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("kernel_shap", {"nsamples": 0}, "params.nsamples"),
        ("kernel_shap", {"nsample": 100}, "params.nsample: Extra inputs are not permitted"),
        ("kernel_shap", {"l1_reg": "lots"}, "params.l1_reg"),
        ("kernel_shap", {"summarize": "median"}, "params.summarize"),
        ("lime", {"num_samples": "many"}, "params.num_samples"),
        ("anchors", {"threshold": 1.5}, "params.threshold"),
    ],
)
def test_bad_params_are_the_callers_mistake(
    method: str, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")):
        parse_params(job_method(method), params)


def test_unknown_method_and_canonical_params() -> None:
    with pytest.raises(InvalidInput, match="'shapley' is not one of"):
        job_method("shapley")
    cls = job_method("kernel_shap")
    assert canonical_params(parse_params(cls, {})) == canonical_params(
        parse_params(cls, {"nsamples": "auto", "seed": 0})
    )
    assert canonical_params(parse_params(cls, {"seed": 1})) != canonical_params(
        parse_params(cls, {})
    )


def test_methods_not_offered_by_the_manifest_are_refused(tmp_path: Path) -> None:
    iris = demo("iris")
    explain = iris.manifest.explain.model_copy(update={"methods": ["lime"]})
    model = dataclasses.replace(
        iris, manifest=iris.manifest.model_copy(update={"explain": explain})
    )
    with pytest.raises(NotExplainable, match="does not offer kernel_shap"):
        check_offered(KernelShap, model)
    check_offered(Lime, model)


class ConstantParams(MethodParams):
    value: float = 0.0


class Constant(JobExplainer):
    """A plugin's job method: every feature gets ``value``."""

    method = "constant"
    Params = ConstantParams

    def __init__(self, model: ModelVersion, params: MethodParams) -> None:
        assert isinstance(params, ConstantParams)
        self.value, self.n = params.value, len(model.features)

    def explain_row(self, row: np.ndarray) -> Record:
        return {"values": [self.value] * self.n}

    @classmethod
    def render(
        cls, model: ModelVersion, record: Record, label: str | None, reasons: int
    ) -> Explanation:
        values = dict(zip(model.feature_names, record["values"], strict=True))
        return Explanation(cls.method, values=values)


def check_plugin_job_method() -> None:
    """In a process where the plugin distribution is installed: its method is offered,
    described and run like a built-in."""
    assert JOB_METHODS.names() == [*BUILTIN_JOB_METHODS, "constant"]
    assert job_method("constant") is Constant
    iris = demo("iris")
    explain = iris.manifest.explain.model_copy(update={"methods": ["constant", "lime"]})
    model = dataclasses.replace(
        iris, manifest=iris.manifest.model_copy(update={"explain": explain})
    )
    info = method_info(model)
    assert [m["method"] for m in info] == ["constant", "lime"]
    assert info[0] == {"method": "constant", "available": True, "params": {"value": 0.0}}
    check_offered(Constant, model)
    record = Constant(model, parse_params(Constant, {"value": 2})).explain_row(np.zeros(4))
    assert record == {"values": [2.0] * 4}


def test_a_plugin_job_method_from_an_entry_point(tmp_path: Path) -> None:
    """An installed distribution's ``xserve.explainers`` entry point."""
    plugin = {"xserve.explainers": {"constant": f"{__name__}:Constant"}}
    site = install_plugin(tmp_path / "site", plugin)
    run_with_plugin(site, f"{__name__}:check_plugin_job_method")
