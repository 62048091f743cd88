"""REST v1: model listing, metadata and predict."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from litestar import Controller, Request, get, post
from litestar.params import Parameter
from litestar.serialization import decode_json

from xserve.api.auth import requires
from xserve.api.limits import OFF_LOOP_BYTES
from xserve.api.openapi import AUTH, BEARER, BODY, answers, request_body
from xserve.api.schemas import PREDICT_EXAMPLE, ModelList, ModelMetadata, PredictRequest
from xserve.errors import InvalidInput
from xserve.explainers.reasons import DEFAULT_REASONS
from xserve.serving.dataplane import DataPlane
from xserve.serving.inputs import check_client_id, check_depth
from xserve.serving.outcome import Answer
from xserve.serving.request import DecisionRequest, Kind

__all__ = ["CLASS", "REASONS", "SUBJECT", "JsonRequest", "V1Controller", "v1_request"]


CLASS = Parameter(query="class", default=None, description="Class to explain (label)")
REASONS = Parameter(ge=0, le=100, default=DEFAULT_REASONS, description="Reason codes per instance")
SUBJECT = Parameter(
    header="X-Subject-Id",
    default=None,
    description="Who the decision is about: a traffic split sends the same subject to the same "
    "version every time (without it, each request draws its version at random)",
)
MODEL_PATHS = ["/models/{model:str}", "/models/{model:str}/versions/{version:str}"]


def v1_request(
    kind: Kind, model: str, version: str | None, data: Any, **fields: Any
) -> DecisionRequest:
    """The decision request of a v1 body (``{"instances": [...], "id"?, ...}``)."""
    if not isinstance(data, dict):
        raise InvalidInput("body: expected a JSON object with 'instances'")
    check_client_id(data.get("id"))
    return DecisionRequest(
        kind, model, version, instances=data.get("instances"), client_id=data.get("id"), **fields
    )


class JsonRequest(Request[Any, Any, Any]):
    """A request whose JSON body is refused (400 ``invalid_json``) when it nests deeper than
    ``MAX_DEPTH``, before the decoder recurses into it."""

    async def json(self) -> Any:
        body = await self.body()
        if len(body) >= OFF_LOOP_BYTES:  # megabytes of JSON: decoded off the event loop
            return await anyio.to_thread.run_sync(_decode_json, body)
        check_depth(body)
        return await super().json()


def _decode_json(body: bytes) -> Any:
    check_depth(body)
    return decode_json(body)


class V1Controller(Controller):
    path = "/v1"
    tags = ["v1"]
    request_class = JsonRequest
    security = BEARER

    @get("/models", sync_to_thread=False, responses=answers(ModelList, *AUTH))
    def list_models(self, dataplane: DataPlane) -> dict[str, Any]:
        """Every model with its versions, their state, flavor and error if any."""
        return {"models": dataplane.models()}

    @get(MODEL_PATHS, sync_to_thread=False, responses=answers(ModelMetadata, 400, *AUTH, 404, 503))
    def model_metadata(
        self, dataplane: DataPlane, model: str, version: str | None = None
    ) -> dict[str, Any]:
        """The serving (or given) version's metadata; without a version, every version's
        state and the traffic policy too."""
        return dataplane.metadata(model, version)

    @post(
        [p + "/predict" for p in MODEL_PATHS],
        status_code=200,
        opt=requires("predict"),
        responses=answers(None, *AUTH, *BODY, 404, 503),
        operation_class=request_body(PredictRequest, PREDICT_EXAMPLE),
    )
    async def predict(
        self,
        dataplane: DataPlane,
        model: str,
        data: Any,
        caller: str | None,
        version: str | None = None,
        explain: bool = False,
        label: str | None = CLASS,
        reasons: int = REASONS,
        subject: str | None = SUBJECT,
    ) -> Answer:
        """Predict for `instances` (objects by feature name, or rows in feature order);
        `?explain=true` adds exact inline attributions and reason codes. Without a version,
        the model's traffic policy (deployment.yaml) chooses; the answer names it."""
        request = v1_request(
            "predict",
            model,
            version,
            data,
            explain=explain,
            label=label,
            reasons=reasons,
            caller=caller,
            subject=subject if version is None else None,
        )
        return (await dataplane.decide(request)).answered()
