"""REST v1: model listing, metadata and predict."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get, post
from litestar.params import Parameter

from xserve.errors import InvalidInput
from xserve.explainers.reasons import DEFAULT_REASONS
from xserve.serving.dataplane import DataPlane

__all__ = ["CLASS", "REASONS", "SUBJECT", "V1Controller", "payload_object"]


CLASS = Parameter(query="class", default=None, description="Class to explain (label)")
REASONS = Parameter(ge=0, le=100, default=DEFAULT_REASONS, description="Reason codes per instance")
SUBJECT = Parameter(
    header="X-Subject-Id",
    default=None,
    description="Who the decision is about: a traffic split sends the same subject to the same "
    "version every time (without it, each request draws its version at random)",
)


def payload_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInput("body: expected a JSON object with 'instances'")
    return data


class V1Controller(Controller):
    path = "/v1"
    tags = ["v1"]

    @get("/models", sync_to_thread=False)
    def list_models(self, dataplane: DataPlane) -> dict[str, Any]:
        """Every model with its versions, their state, flavor and error if any."""
        return {"models": dataplane.repository.describe()}

    @get("/models/{model:str}", sync_to_thread=False)
    def model_metadata(self, dataplane: DataPlane, model: str) -> dict[str, Any]:
        """The serving version's metadata, and every version's state."""
        serving = dataplane.model(model)
        out = serving.describe()
        out["versions"] = [e.describe() for e in dataplane.repository.versions(model)]
        out["serving_version"] = serving.version
        out["traffic"] = dataplane.repository.traffic(model)
        return out

    @get("/models/{model:str}/versions/{version:str}", sync_to_thread=False)
    def version_metadata(self, dataplane: DataPlane, model: str, version: str) -> dict[str, Any]:
        return dataplane.model(model, version).describe()

    @post("/models/{model:str}/predict", status_code=200)
    async def predict(
        self,
        dataplane: DataPlane,
        model: str,
        data: Any,
        caller: str | None,
        explain: bool = False,
        label: str | None = CLASS,
        reasons: int = REASONS,
        subject: str | None = SUBJECT,
    ) -> dict[str, Any]:
        """Predict for `instances` (objects by feature name, or rows in feature order);
        `?explain=true` adds exact inline attributions and reason codes. The model's traffic
        policy (deployment.yaml) chooses the version; the answer names it."""
        return await dataplane.predict(
            model,
            None,
            payload_object(data),
            explain,
            label,
            reasons,
            caller=caller,
            subject=subject,
        )

    @post("/models/{model:str}/versions/{version:str}/predict", status_code=200)
    async def predict_version(
        self,
        dataplane: DataPlane,
        model: str,
        version: str,
        data: Any,
        caller: str | None,
        explain: bool = False,
        label: str | None = CLASS,
        reasons: int = REASONS,
    ) -> dict[str, Any]:
        """Predict with one given version."""
        return await dataplane.predict(
            model, version, payload_object(data), explain, label, reasons, caller=caller
        )
