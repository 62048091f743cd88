"""The hand-written baseline with explanations: FastAPI + shap, as a user would write it.

A pydantic request model with the eight named float fields, the booster loaded
once with xgboost and ``shap.TreeExplainer(booster)`` built once at start. A
plain ``def`` endpoint (FastAPI runs it in its thread pool) computes the
probabilities with ``inplace_predict`` and, with ``?explain=true``,
``explainer.shap_values(x)`` (shap's defaults, so its additivity check
included). The answer has xserve's v1 shape: ``predictions``, ``probabilities``
and one explanation per instance with the per-feature values, the base value
and the top 4 positive contributions as reason codes. It always explains the
log-odds of class 1 (the adverse class), the output shap gives for a binary
booster.

Run it as ``uvicorn baseline_fastapi_shap:app --app-dir bench``; ``BASELINE_MODEL``
overrides the model file (default: ``models/credit-risk/1/model.json``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import shap
import shap.explainers._tree as shap_tree
import xgboost as xgb
from fastapi import FastAPI
from pydantic import BaseModel, Field

MODEL_PATH = Path(
    os.environ.get(
        "BASELINE_MODEL",
        Path(__file__).resolve().parents[1] / "models" / "credit-risk" / "1" / "model.json",
    )
)
FEATURES = (
    "age",
    "annual_income",
    "debt_to_income",
    "credit_utilization",
    "num_open_accounts",
    "delinquencies_2y",
    "months_employed",
    "loan_amount",
)
REASONS = {
    "age": "Age of applicant",
    "annual_income": "Income too low for the credit requested",
    "debt_to_income": "Debt-to-income ratio too high",
    "credit_utilization": "Credit utilization too high",
    "num_open_accounts": "Too many open credit accounts",
    "delinquencies_2y": "Recent delinquency on an account",
    "months_employed": "Length of employment too short",
    "loan_amount": "Loan amount too high relative to income",
}
N_REASONS = 4


def tree_explainer(booster: xgb.Booster) -> shap.TreeExplainer:
    """``shap.TreeExplainer(booster)``, working around shap 0.49's loader, which cannot
    parse XGBoost >= 3.1's vector ``base_score`` ('[2.208E-1]'). The loader only needs a
    number: for a booster, shap takes the attributions and the base value from XGBoost's
    ``pred_contribs``."""
    decode = shap_tree.decode_ubjson_buffer

    def plain_base_score(fd: Any) -> dict[str, Any]:
        model: dict[str, Any] = decode(fd)
        params = model["learner"]["learner_model_param"]
        raw = params["base_score"]
        if isinstance(raw, str) and raw.startswith("["):
            params["base_score"] = raw.strip("[]").split(",")[0]
        return model

    with mock.patch.object(shap_tree, "decode_ubjson_buffer", plain_base_score):
        return shap.TreeExplainer(booster)


booster = xgb.Booster()
booster.load_model(str(MODEL_PATH))
explainer = tree_explainer(booster)

app = FastAPI(title="credit-risk with shap (hand-written baseline)")


class Applicant(BaseModel):
    age: float
    annual_income: float
    debt_to_income: float
    credit_utilization: float
    num_open_accounts: float
    delinquencies_2y: float
    months_employed: float
    loan_amount: float


class PredictRequest(BaseModel):
    instances: list[Applicant]


class ReasonCode(BaseModel):
    feature: str
    reason: str
    contribution: float


class Explanation(BaseModel):
    method: str = "tree_shap"
    class_: int = Field(default=1, serialization_alias="class")
    output: str = "margin"
    base_value: float
    values: dict[str, float]
    reason_codes: list[ReasonCode]


class PredictResponse(BaseModel):
    model: str
    version: str
    request_id: str
    predictions: list[int]
    probabilities: list[list[float]]
    explanations: list[Explanation] | None = None


def explanation(values: np.ndarray[Any, Any], base_value: float) -> Explanation:
    """One row's class-1 log-odds attributions and its top positive contributions."""
    order = [int(i) for i in np.argsort(-values, kind="stable") if values[i] > 0][:N_REASONS]
    return Explanation(
        base_value=base_value,
        values=dict(zip(FEATURES, values.tolist(), strict=True)),
        reason_codes=[
            ReasonCode(
                feature=FEATURES[i], reason=REASONS[FEATURES[i]], contribution=float(values[i])
            )
            for i in order
        ],
    )


@app.post(
    "/v1/models/credit-risk/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
)
def predict(request: PredictRequest, explain: bool = False) -> PredictResponse:
    x = np.array(
        [
            [
                a.age,
                a.annual_income,
                a.debt_to_income,
                a.credit_utilization,
                a.num_open_accounts,
                a.delinquencies_2y,
                a.months_employed,
                a.loan_amount,
            ]
            for a in request.instances
        ],
        dtype=np.float64,
    )
    p = np.asarray(booster.inplace_predict(x, validate_features=False), dtype=np.float64)
    response = PredictResponse(
        model="credit-risk",
        version="1",
        request_id=uuid.uuid4().hex,
        predictions=(p > 0.5).astype(int).tolist(),
        probabilities=np.column_stack([1.0 - p, p]).tolist(),
    )
    if explain:
        values = np.asarray(explainer.shap_values(x), dtype=np.float64)  # (rows, features)
        base_value = float(np.asarray(explainer.expected_value).reshape(-1)[0])
        response.explanations = [explanation(row, base_value) for row in values]
    return response
