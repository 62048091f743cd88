"""The shapes of the HTTP API's bodies, for the OpenAPI document only.

Handlers keep answering plain dicts (or the typed outcomes of
:mod:`xserve.serving.outcome`) and reading raw bodies: these Structs are never built or
checked per request. Routes name them through ``responses=`` and the request bodies of
:mod:`xserve.api.openapi`; a test checks the served answers against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "AuditPage",
    "AuditRecord",
    "CacheStats",
    "DriftReport",
    "ErrorBody",
    "ExplainRequest",
    "InferRequest",
    "InferResponse",
    "Live",
    "ModelList",
    "ModelMetadata",
    "PredictRequest",
    "Ready",
    "V2Live",
    "V2ModelMetadata",
    "V2ModelReady",
    "V2Ready",
    "V2ServerMetadata",
    "Verdict",
]


class ErrorBody(msgspec.Struct):
    """Every error answer: a message for people and a stable code for programs."""

    error: str
    code: str


# -- v1 requests -----------------------------------------------------------------------

Value = float | int | str | bool | None
"""A feature value: a number, a category name, a boolean, or null (missing)."""

Instances = Annotated[
    list[dict[str, Value] | list[Value]],
    Meta(
        min_length=1,
        description="Objects keyed by feature name, or rows in feature order",
    ),
]
ClientIdField = Annotated[
    str | int | float | None,
    Meta(description="The caller's own id for the request, echoed and recorded"),
]

_CREDIT_RISK_ROW = {
    "age": 35,
    "annual_income": 52000,
    "debt_to_income": 0.31,
    "credit_utilization": 0.4,
    "num_open_accounts": 5,
    "delinquencies_2y": 0,
    "months_employed": 48,
    "loan_amount": 15000,
}


class PredictRequest(msgspec.Struct, omit_defaults=True):
    """``POST /v1/models/{model}/predict``."""

    instances: Instances
    id: ClientIdField = None


PREDICT_EXAMPLE = {"instances": [_CREDIT_RISK_ROW], "id": "application-1"}


class ExplainRequest(msgspec.Struct, omit_defaults=True):
    """``POST /v1/models/{model}/explain``."""

    instances: Instances
    id: ClientIdField = None
    method: (
        Annotated[
            Literal["tree_shap", "linear_shap", "kernel_shap", "lime", "anchors"],
            Meta(description="Default: the version's inline method, else its first job one"),
        ]
        | None
    ) = None
    params: (
        Annotated[
            dict[str, Any],
            Meta(description="The method's parameters (see the model's metadata, job_methods)"),
        ]
        | None
    ) = None


EXPLAIN_EXAMPLE = {"instances": [_CREDIT_RISK_ROW], "method": "tree_shap"}


# -- v1 answers ------------------------------------------------------------------------


class Live(msgspec.Struct):
    status: str


class Ready(msgspec.Struct):
    ready: bool


class VersionState(msgspec.Struct):
    version: str
    state: Literal["pending", "ready", "failed"]
    flavor: str | None = None
    artifact_sha256: str | None = None
    error: str | None = None


class Traffic(msgspec.Struct):
    """The traffic policy (deployment.yaml) in force, and what it resolved to."""

    policy: str
    pinned: str | None = None
    split: dict[str, float] | None = None
    shadow: str | None = None
    routes: Annotated[dict[str, float], Meta(description="Share of traffic per version")] | None = (
        None
    )
    shadow_error: str | None = None
    requested: dict[str, Any] | None = None
    error: str | None = None


class ModelSummary(msgspec.Struct):
    name: str
    serving_version: str | None
    traffic: Traffic
    versions: list[VersionState]


class ModelList(msgspec.Struct):
    models: list[ModelSummary]


class FeatureSpec(msgspec.Struct):
    name: str
    type: Literal["numeric", "integer", "boolean", "categorical"]
    description: str | None = None
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    nullable: bool = False
    personal: bool = False


class JobMethodInfo(msgspec.Struct):
    method: str
    available: bool
    params: dict[str, Any]
    unavailable: str | None = None


class InlineBackground(msgspec.Struct):
    """The reference rows of an interventional inline explainer (ONNX trees)."""

    rows: int
    of: int
    cap: int
    sample: str


class ExplainInfo(msgspec.Struct):
    inline: str | None
    inline_output: str | None
    inline_unavailable: str | None
    methods: list[str]
    job_methods: list[JobMethodInfo]
    inline_background: InlineBackground | None = None


class ModelMetadata(msgspec.Struct):
    """A version's metadata; without a version in the path, also every version's state,
    the serving version and the traffic policy."""

    name: str
    version: str
    flavor: str
    task: Literal["classification", "regression"]
    features: list[FeatureSpec]
    classes: list[Any] | None
    artifact_sha256: str
    explain: ExplainInfo
    description: str | None = None
    intended_use: str | None = None
    limitations: str | None = None
    versions: list[VersionState] | None = None
    serving_version: str | None = None
    traffic: Traffic | None = None


class DriftWindow(msgspec.Struct):
    rows: int
    size: int
    since: str | None
    until: str | None


class DriftReference(msgspec.Struct):
    rows: int | None


class DriftThresholds(msgspec.Struct):
    psi_warn: float
    psi_drift: float
    min_rows: int


class FeatureDrift(msgspec.Struct):
    psi: float | None
    ks: float | None
    ks_pvalue: float | None
    status: Literal["ok", "warn", "drift"] | None


class DriftReport(msgspec.Struct):
    model: str
    version: str
    window: DriftWindow
    reference: DriftReference
    thresholds: DriftThresholds
    features: dict[str, FeatureDrift]


class CacheStats(msgspec.Struct):
    backend: str
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    job_queue: str


class AuditRecord(msgspec.Struct):
    """One record of the hash chain: its body as stored, with the chain's hashes."""

    seq: int
    prev_hash: str
    hash: str
    time: str | None = None
    request_id: str | None = None
    kind: str | None = None
    caller: str | None = None
    model: str | None = None
    version: str | None = None
    artifact_sha256: str | None = None
    input: Any = None
    output: Any = None
    explanations: Any = None
    reason_codes: Any = None


class AuditPage(msgspec.Struct):
    records: list[AuditRecord]
    next_after: Annotated[int, Meta(description="Pass as ?after= for the next page")] | None


class ChainHead(msgspec.Struct):
    seq: int
    hash: str


class BadRecord(msgspec.Struct):
    seq: int
    reason: str | None


class Verdict(msgspec.Struct):
    ok: bool
    records: int
    head: ChainHead
    first_bad: BadRecord | None


# -- the Open Inference Protocol (V2) -------------------------------------------------

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
Shape = list[Annotated[int, Meta(ge=0)]]


class InferInput(msgspec.Struct, omit_defaults=True):
    name: str
    shape: Shape
    datatype: Datatype
    data: (
        Annotated[
            list[Any],
            Meta(
                description="Row-major values (flat or nested); absent "
                "when the tensor is in the binary part"
            ),
        ]
        | None
    ) = None
    parameters: dict[str, Any] | None = None


class RequestedOutput(msgspec.Struct, omit_defaults=True):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(msgspec.Struct, omit_defaults=True):
    """``POST /v2/models/{model}/infer``: one ``[n, features]`` tensor, or one ``[n]``
    tensor per feature by name; ``parameters.explain`` adds attributions. With the binary
    tensor extension the body is this JSON followed by the raw tensors, the JSON's length
    in ``Inference-Header-Content-Length``."""

    inputs: Annotated[list[InferInput], Meta(min_length=1)]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestedOutput] | None = None


INFER_EXAMPLE = {
    "id": "application-1",
    "inputs": [
        {
            "name": "input-0",
            "shape": [1, 8],
            "datatype": "FP64",
            "data": list(_CREDIT_RISK_ROW.values()),
        }
    ],
    "parameters": {"explain": True},
}


class InferOutput(msgspec.Struct):
    name: str
    datatype: Datatype
    shape: Shape
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(msgspec.Struct):
    model_name: str
    model_version: str
    id: str
    outputs: list[InferOutput]
    parameters: dict[str, Any] | None = None


class V2ServerMetadata(msgspec.Struct):
    name: str
    version: str
    extensions: list[str]


class V2Live(msgspec.Struct):
    live: bool


class V2Ready(msgspec.Struct):
    ready: bool


class TensorSpec(msgspec.Struct):
    name: str
    datatype: Datatype
    shape: list[int]


class V2ModelMetadata(msgspec.Struct):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: dict[str, Any]


class V2ModelReady(msgspec.Struct):
    name: str
    version: str
    ready: bool
