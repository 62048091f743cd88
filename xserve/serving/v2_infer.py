"""The Open Inference Protocol's view of a model version, for every transport (REST, gRPC):
its metadata, the rows of a request's tensors, and the output tensors of a prediction."""

from __future__ import annotations

from typing import Any

import numpy as np

from xserve.errors import InvalidInput
from xserve.repository.version import ModelVersion
from xserve.serving.prediction import Prediction
from xserve.serving.request import DecisionRequest
from xserve.serving.v2_tensors import InferRequest, OutputTensor

__all__ = [
    "ATTRIBUTIONS_OUTPUT",
    "BASE_VALUES_OUTPUT",
    "EXPLAINED_CLASS_OUTPUT",
    "MATRIX_INPUT",
    "PREDICT_OUTPUT",
    "PROBABILITIES_OUTPUT",
    "check_outputs",
    "infer_request",
    "label_datatype",
    "metadata",
    "output_specs",
    "outputs",
    "rows",
]

MATRIX_INPUT = "input-0"
PREDICT_OUTPUT = "predict"
PROBABILITIES_OUTPUT = "probabilities"
ATTRIBUTIONS_OUTPUT = "attributions"
BASE_VALUES_OUTPUT = "base_values"
EXPLAINED_CLASS_OUTPUT = "explained_class"
"""With attributions of a classifier: the class each row's attributions explain."""
CONTENT_TYPES = {"BYTES": "str"}
"""MLServer's codec of each output (``parameters.content_type``): StringCodec for text,
NumpyCodec ("np") for numbers."""


def rows(model: ModelVersion, request: InferRequest) -> list[Any]:
    """One [n, features] tensor, or one [n] / [n, 1] tensor per feature by name."""
    tensors = request.inputs
    names = model.feature_names
    if len(tensors) == 1 and next(iter(tensors)) not in names:
        ((name, arr),) = tensors.items()
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != len(names):
            raise InvalidInput(
                f"inputs.{name}: expected shape [n, {len(names)}] ({', '.join(names)}), "
                f"got {list(arr.shape)}"
            )
        return arr.tolist()  # type: ignore[no-any-return]
    unknown = sorted(set(tensors) - set(names))
    if unknown:
        raise InvalidInput(f"inputs.{unknown[0]}: unknown feature")
    missing = [n for n in names if n not in tensors]
    if missing:
        raise InvalidInput(f"inputs.{missing[0]}: missing feature")
    for n in names:
        shape = tensors[n].shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidInput(f"inputs.{n}: expected shape [n] or [n, 1], got {list(shape)}")
    columns = [tensors[n].reshape(-1) for n in names]
    if len({len(c) for c in columns}) != 1:
        raise InvalidInput("inputs: every feature tensor must have the same length")
    return [list(r) for r in zip(*(c.tolist() for c in columns), strict=True)]


def label_datatype(model: ModelVersion) -> str:
    """FP64 values, INT64 class indices or integer labels, or BYTES for other labels."""
    if model.task == "regression":
        return "FP64"
    classes = model.classes or []
    integral = all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
    return "INT64" if integral else "BYTES"


def output_specs(model: ModelVersion) -> list[dict[str, Any]]:
    specs = [{"name": PREDICT_OUTPUT, "datatype": label_datatype(model), "shape": [-1]}]
    if model.task == "classification":
        n = len(model.classes) if model.classes else -1
        specs.append({"name": PROBABILITIES_OUTPUT, "datatype": "FP64", "shape": [-1, n]})
    return specs


def check_outputs(model: ModelVersion, request: InferRequest, explain: bool) -> None:
    """The requested outputs must exist for this version (and this request)."""
    known = [o["name"] for o in output_specs(model)]
    if explain:
        known += [ATTRIBUTIONS_OUTPUT, BASE_VALUES_OUTPUT]
        if model.task == "classification":
            known.append(EXPLAINED_CLASS_OUTPUT)
    for o in request.outputs or []:
        if o["name"] not in known:
            raise InvalidInput(f"outputs.{o['name']}: unknown output; this request has {known}")


def _explanation(prediction: Prediction) -> list[OutputTensor]:
    """Each row's attributions [n, features] and base value [n], for its predicted class,
    and (classifiers) that class's label [n]."""
    a = prediction.attribution
    if a is None:
        return []
    chosen_rows = np.arange(len(prediction.outputs))
    chosen = np.asarray(prediction.explained_outputs(None))
    params = {"method": a.method, "output": a.output}
    tensors = [
        OutputTensor(ATTRIBUTIONS_OUTPUT, a.values[chosen_rows, :, chosen], "FP64", params),
        OutputTensor(BASE_VALUES_OUTPUT, a.base[chosen_rows, chosen], "FP64", params),
    ]
    model = prediction.model
    if model.task == "classification":
        classes = model.classes
        labels = [classes[k] for k in chosen.tolist()] if classes else chosen.tolist()
        tensors.append(_labels(EXPLAINED_CLASS_OUTPUT, model, labels))
    return tensors


def _labels(name: str, model: ModelVersion, labels: list[Any]) -> OutputTensor:
    datatype = label_datatype(model)
    dtype = {"FP64": np.float64, "INT64": np.int64, "BYTES": object}[datatype]
    return OutputTensor(name, np.asarray(labels, dtype=dtype), datatype)


def outputs(prediction: Prediction) -> list[OutputTensor]:
    """Every output tensor of ``prediction`` (attributions too when it has them), each
    naming its MLServer content type."""
    tensors = [_labels(PREDICT_OUTPUT, prediction.model, prediction.labels)]
    if prediction.model.task == "classification":
        tensors.append(OutputTensor(PROBABILITIES_OUTPUT, prediction.outputs, "FP64"))
    tensors += _explanation(prediction)
    for t in tensors:
        t.parameters["content_type"] = CONTENT_TYPES.get(t.datatype, "np")
    return tensors


def metadata(model: ModelVersion, versions: list[str]) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": versions,
        "platform": model.flavor,
        "inputs": [{"name": MATRIX_INPUT, "datatype": "FP64", "shape": [-1, len(model.features)]}],
        "outputs": output_specs(model),
        "parameters": {
            "features": model.feature_names,
            "classes": model.classes,
            "task": model.task,
        },
    }


def infer_request(
    model: str, version: str | None, body: InferRequest, caller: str | None, subject: str | None
) -> DecisionRequest:
    """The decision request of a V2 request: rows and outputs are checked against the
    version the data plane chooses."""
    explain = body.parameters.get("explain", False)
    if not isinstance(explain, bool):
        raise InvalidInput("parameters.explain: expected true or false")

    def rows_for(mv: ModelVersion) -> list[Any]:
        check_outputs(mv, body, explain)
        return rows(mv, body)

    return DecisionRequest(
        "infer",
        model,
        version,
        rows_for=rows_for,
        explain=explain,
        caller=caller,
        subject=subject if version is None else None,
        client_id=body.id,
    )
