"""The hand-written baseline: the FastAPI app a user would write to serve ``credit-risk``.

A pydantic request model with the eight named float fields, the booster loaded
once with xgboost, ``inplace_predict`` in a plain ``def`` endpoint (FastAPI runs
it in its thread pool) and the same response shape as xserve's v1 predict.

Run it as ``uvicorn baseline_fastapi:app --app-dir bench``; ``BASELINE_MODEL``
overrides the model file (default: ``models/credit-risk/1/model.json``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import xgboost as xgb
from fastapi import FastAPI
from pydantic import BaseModel

MODEL_PATH = Path(
    os.environ.get(
        "BASELINE_MODEL",
        Path(__file__).resolve().parents[1] / "models" / "credit-risk" / "1" / "model.json",
    )
)

booster = xgb.Booster()
booster.load_model(str(MODEL_PATH))

app = FastAPI(title="credit-risk (hand-written baseline)")


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


class PredictResponse(BaseModel):
    model: str
    version: str
    request_id: str
    predictions: list[int]
    probabilities: list[list[float]]


@app.post("/v1/models/credit-risk/predict")
def predict(request: PredictRequest) -> PredictResponse:
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
    return PredictResponse(
        model="credit-risk",
        version="1",
        request_id=uuid.uuid4().hex,
        predictions=(p > 0.5).astype(int).tolist(),
        probabilities=np.column_stack([1.0 - p, p]).tolist(),
    )
