"""REST v1 outcomes: recording what happened after decisions, and what it shows
(performance per version, versions compared)."""

from __future__ import annotations

from typing import Any, cast

import anyio.to_thread
import msgspec
from litestar import Controller, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.params import Parameter

from xserve.api.auth import requires
from xserve.api.openapi import AUTH, BEARER, BODY, answers, request_body
from xserve.api.schemas import ErrorBody
from xserve.api.v1 import JsonRequest
from xserve.errors import InvalidInput
from xserve.outcomes.service import OutcomesBody, OutcomeService, Recorded
from xserve.reports.data import parse_time

__all__ = ["OutcomesController"]

EXAMPLE = {"outcomes": [{"request_id": "01a23c4f0a5d7016bc0e300adb5c43ec", "outcome": 1}]}
REFUSAL = cast("type[Any]", Recorded | ErrorBody)  # a union: ResponseSpec's hint wants a type
REFUSED = "Items refused, each named (the others recorded), or a body xserve refuses"
SINCE = Parameter(default=None, description="Decisions from this time (ISO 8601, UTC)")
UNTIL = Parameter(default=None, description="Decisions before this time (a bare date: included)")


class OutcomesController(Controller):
    path = "/v1"
    tags = ["outcomes"]
    security = BEARER
    request_class = JsonRequest  # nesting checked before the body is decoded

    @post(
        "/outcomes",
        status_code=200,
        opt=requires("outcomes"),
        responses={
            **answers(Recorded, *AUTH, *BODY, 404, 503),
            # some items refused: the others' count and each refusal, or a refused body
            422: ResponseSpec(REFUSAL, generate_examples=False, description=REFUSED),
        },
        operation_class=request_body(OutcomesBody, EXAMPLE),
    )
    async def record(
        self, outcomes: OutcomeService, data: Any, caller: str | None
    ) -> Response[Recorded]:
        """Record outcomes of earlier decisions (appended to the audit chain, linked to the
        decision; a later one for the same request and instance supersedes). Items that
        cannot be recorded are refused one by one: the answer is then 422, naming them,
        and the others are recorded."""
        try:
            body = msgspec.convert(data, OutcomesBody)
        except msgspec.ValidationError as exc:
            raise InvalidInput(f"body: {exc}") from None
        result = await anyio.to_thread.run_sync(outcomes.record, body.outcomes, caller)
        return Response(result, status_code=422 if result.refused else 200)

    @get(
        [
            "/models/{model:str}/performance",
            "/models/{model:str}/versions/{version:str}/performance",
        ],
        opt=requires("audit", "outcomes"),
        responses=answers(None, 400, *AUTH, 404, 422, 503),
    )
    async def performance(
        self,
        outcomes: OutcomeService,
        model: str,
        version: str | None = None,
        since: str | None = SINCE,
        until: str | None = UNTIL,
    ) -> dict[str, Any]:
        """Per version, on the decisions of the period that have outcomes: n, AUC,
        accuracy, Brier, ECE (regressors: RMSE, MAE), each with a bootstrap 95% interval,
        and the concept-drift status against the version's baseline."""
        start, end = parse_time("since", since), parse_time("until", until, end=True)
        return await anyio.to_thread.run_sync(outcomes.performance, model, version, start, end)

    @get(
        "/models/{model:str}/compare",
        opt=requires("audit", "outcomes"),
        responses=answers(None, 400, *AUTH, 404, 422, 503),
    )
    async def compare(
        self,
        outcomes: OutcomeService,
        model: str,
        a: str,
        b: str,
        metric: str = "auc",
        since: str | None = SINCE,
        until: str | None = UNTIL,
    ) -> dict[str, Any]:
        """Version b against version a on one metric (auc, accuracy, brier, ece, rmse, mae,
        adverse_rate): the difference, its 95% interval, a p-value (DeLong for AUC,
        two-proportion or McNemar for rates, bootstrap otherwise) and n per arm; paired
        when one version shadowed the other."""
        start, end = parse_time("since", since), parse_time("until", until, end=True)
        return await anyio.to_thread.run_sync(outcomes.compare, model, a, b, metric, start, end)
