"""Predict (and explain) for every front-end: REST v1, the V2 protocol, the CLI, jobs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np

from xserve.inputs import to_matrix
from xserve.repository.repository import ModelRepository
from xserve.repository.version import ModelVersion
from xserve.runtimes.base import Matrix
from xserve.settings import Settings

__all__ = ["DataPlane", "Prediction"]


@dataclass
class Prediction:
    """Model outputs for a batch, with labels derived the same way for every flavor."""

    model: ModelVersion
    outputs: Matrix
    """Probabilities (n, classes) for classifiers, values (n,) for regressors."""

    @property
    def labels(self) -> list[Any]:
        if self.model.task == "regression":
            return self.outputs.tolist()  # type: ignore[no-any-return]
        classes = self.model.classes
        idx = np.argmax(self.outputs, axis=1).tolist()
        return [classes[i] for i in idx] if classes else idx

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"predictions": self.labels}
        if self.model.task == "classification":
            out["probabilities"] = self.outputs.tolist()
        return out


class DataPlane:
    def __init__(self, repository: ModelRepository, settings: Settings) -> None:
        self.repository = repository
        self.settings = settings

    def model(self, name: str, version: str | None = None) -> ModelVersion:
        return self.repository.get(name, version)

    def matrix(self, model: ModelVersion, instances: Any) -> Matrix:
        return to_matrix(instances, model.features, self.settings.max_instances)

    @staticmethod
    def predict_matrix(model: ModelVersion, x: Matrix) -> Prediction:
        return Prediction(model, model.runtime.predict(x))

    async def predict(
        self, name: str, version: str | None, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """The v1 predict answer for ``payload`` (``{"instances": [...], "id"?}``)."""
        model = self.model(name, version)
        x = self.matrix(model, payload.get("instances"))
        prediction = await anyio.to_thread.run_sync(self.predict_matrix, model, x)
        answer: dict[str, Any] = {
            "model": model.name,
            "version": model.version,
            "request_id": uuid.uuid4().hex,
        }
        if "id" in payload:
            answer["id"] = payload["id"]
        answer.update(prediction.to_dict())
        return answer
