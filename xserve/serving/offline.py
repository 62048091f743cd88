"""``xserve predict``: batch inference over a CSV or Parquet file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
from tqdm import tqdm

from xserve.errors import InvalidInput, ModelNotReady, NotExplainable
from xserve.explainers.attach import attach_inline
from xserve.explainers.describe import no_inline_message
from xserve.repository.manifest import Feature
from xserve.repository.repository import ModelRepository
from xserve.repository.version import ModelVersion, frame_to_matrix, read_table
from xserve.runtimes.base import Matrix
from xserve.serving.prediction import Prediction, score

__all__ = ["explanation_frame", "predict_file", "prediction_frame"]


def prediction_frame(model: ModelVersion, outputs: Matrix) -> pd.DataFrame:
    p = Prediction(model, outputs)  # labels derived exactly as the server does
    frame = pd.DataFrame({"prediction": p.labels})
    if model.task == "classification":
        for j, label in enumerate(model.classes or range(outputs.shape[1])):
            frame[f"probability_{label}"] = outputs[:, j]
    return frame


def explanation_frame(model: ModelVersion, prediction: Prediction) -> pd.DataFrame:
    """One row per instance: the explained class, base value, one attribution column per
    feature and the reason codes (JSON), rendered exactly as the server renders them."""
    rows = []
    for explanation in prediction.explanations():
        row = {
            "explanation_method": explanation.method,
            "explained_class": explanation.class_,
            "explanation_output": explanation.output,
            "base_value": explanation.base_value,
        }
        row.update({f"attribution_{k}": v for k, v in (explanation.values or {}).items()})
        row["reason_codes"] = json.dumps(msgspec.to_builtins(explanation.reason_codes or []))
        rows.append(row)
    return pd.DataFrame(rows)


def _no_outputs(model: ModelVersion) -> Matrix:
    """The outputs of zero rows, shaped as the model's would be."""
    if model.task == "regression":
        return np.empty((0,))
    return np.empty((0, len(model.classes or [])))


def _model(repository: ModelRepository, name: str, version: str | None) -> ModelVersion:
    """The version to use; when none loads, say why each failed."""
    try:
        return repository.get(name, version)
    except ModelNotReady as exc:
        failures = [f"version {e.version}: {e.error}" for e in repository.versions(name) if e.error]
        if version is not None or not failures:
            raise
        raise ModelNotReady(f"{exc.message}; {'; '.join(failures)}") from None


def _table(data: Path) -> pd.DataFrame:
    try:
        return read_table(data)
    except (ValueError, OSError) as exc:  # pandas and pyarrow parse errors are ValueErrors
        raise InvalidInput(f"{data}: not a readable CSV or Parquet file: {exc}") from None


def _check_values(x: Matrix, features: list[Feature], where: str) -> None:
    """Empty cells are refused as the server refuses null, unless the feature is nullable."""
    for j, feature in enumerate(features):
        bad = np.flatnonzero(np.isinf(x[:, j]) | (np.isnan(x[:, j]) & (not feature.nullable)))
        if bad.size:
            raise InvalidInput(
                f"{where}: column {feature.name}: no finite value in data row {bad[0] + 1}"
                f" ({bad.size} row{'s' if bad.size > 1 else ''} in all)"
            )


def predict_file(
    root: Path,
    name: str,
    version: str | None,
    data: Path,
    out: Path | None,
    batch_size: int,
    explain: bool = False,
) -> None:
    repository = ModelRepository(root, on_load=[attach_inline])
    repository.scan(only=name)
    model = _model(repository, name, version)
    table = _table(data)
    x = frame_to_matrix(table, model.features, str(data))
    _check_values(x, model.features, str(data))
    if explain and model.inline is None:
        raise NotExplainable(no_inline_message(model))
    parts, explained = [], []
    with tqdm(total=len(x), unit="row", desc=f"{name} v{model.version}", file=sys.stderr) as bar:
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            prediction = score(model, chunk, explain)
            parts.append(prediction.outputs)
            if explain:
                explained.append(explanation_frame(model, prediction))
            bar.update(len(chunk))
    outputs = np.concatenate(parts) if parts else _no_outputs(model)
    frames = [table.reset_index(drop=True), prediction_frame(model, outputs)]
    if explained:
        frames.append(pd.concat(explained, ignore_index=True))
    result = pd.concat(frames, axis=1)
    if out is None:
        result.to_csv(sys.stdout, index=False)
    elif out.suffix == ".parquet":
        result.to_parquet(out, index=False)
    else:
        result.to_csv(out, index=False)
