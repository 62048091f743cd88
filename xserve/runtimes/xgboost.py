"""XGBoost boosters saved in the native JSON or UBJ format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from xserve.errors import ModelLoadError
from xserve.repository.manifest import Manifest
from xserve.runtimes.base import Matrix, Runtime, sigmoid, softmax

__all__ = ["XGBoostRuntime"]

PARALLEL_ROWS = 64
"""Fewer rows than this are predicted on one thread. XGBoost's CPU predictor hands
rows to its threads in blocks of 64, so a smaller batch keeps one thread busy, and
waking the others (an OpenMP fork and join) cost more than the prediction itself:
one row took 290 us on two threads against 120 us on one (2-vCPU VM)."""

# Objectives whose "value" prediction is already a probability.
_PROBABILITY_OBJECTIVES = {"binary:logistic", "multi:softprob"}


class XGBoostRuntime(Runtime):
    flavor = "xgboost"
    extensions = (".json", ".ubj")

    def __init__(self, artifact: Path, manifest: Manifest, threads: int = 1) -> None:
        super().__init__(artifact, manifest, threads)
        booster = xgb.Booster()
        try:
            booster.load_model(str(artifact))
        except xgb.core.XGBoostError as exc:
            raise ModelLoadError(f"{artifact}: not a loadable XGBoost model: {exc}") from None
        booster.set_param({"nthread": threads})
        self._one_thread = booster
        if threads > 1:
            self._one_thread = booster.copy()
            self._one_thread.set_param({"nthread": 1})
        config: dict[str, Any] = json.loads(booster.save_config())
        learner = config["learner"]
        self.objective: str = learner["objective"]["name"]
        self.n_classes = max(1, int(learner["learner_model_param"].get("num_class", "0")))
        self.booster = booster
        self.feature_names = list(booster.feature_names) if booster.feature_names else None
        if self.objective.startswith(("binary:", "multi:")):
            self.task = "classification"
            n = 2 if self.objective.startswith("binary:") else self.n_classes
            self.classes = list(range(n))
        else:
            self.task = "regression"

    @property
    def native(self) -> xgb.Booster:
        return self.booster

    @property
    def n_features(self) -> int:
        return int(self.booster.num_features())

    def _for(self, x: Matrix) -> xgb.Booster:
        return self._one_thread if len(x) < PARALLEL_ROWS else self.booster

    def margin(self, x: Matrix) -> Matrix:
        out = self._for(x).inplace_predict(x, predict_type="margin", validate_features=False)
        return np.asarray(out, dtype=np.float64)

    def predict(self, x: Matrix) -> Matrix:
        if self.task == "regression" or self.objective in _PROBABILITY_OBJECTIVES:
            out = np.asarray(
                self._for(x).inplace_predict(x, validate_features=False), dtype=np.float64
            )
        else:  # binary:logitraw, multi:softmax, binary:hinge...: transform the margin
            out = self.margin(x)
            out = sigmoid(out) if out.ndim == 1 else softmax(out)
        if self.task == "classification" and out.ndim == 1:
            out = np.column_stack([1.0 - out, out])
        return out
