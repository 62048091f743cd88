"""``xserve predict``: batch inference over a CSV or Parquet file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from xserve.dataplane import Prediction
from xserve.repository.repository import ModelRepository
from xserve.repository.version import ModelVersion, frame_to_matrix, read_table

__all__ = ["predict_file", "prediction_frame"]


def prediction_frame(model: ModelVersion, outputs: np.ndarray) -> pd.DataFrame:
    p = Prediction(model, outputs)  # labels derived exactly as the server does
    frame = pd.DataFrame({"prediction": p.labels})
    if model.task == "classification":
        for j, label in enumerate(model.classes or range(outputs.shape[1])):
            frame[f"probability_{label}"] = outputs[:, j]
    return frame


def predict_file(
    root: Path, name: str, version: str | None, data: Path, out: Path | None, batch_size: int
) -> None:
    repository = ModelRepository(root)
    repository.scan(only=name)
    model = repository.get(name, version)
    table = read_table(data)
    x = frame_to_matrix(table, model.features, str(data))
    parts = []
    with tqdm(total=len(x), unit="row", desc=f"{name} v{model.version}", file=sys.stderr) as bar:
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            parts.append(model.runtime.predict(chunk))
            bar.update(len(chunk))
    outputs = np.concatenate(parts) if parts else np.empty((0,))
    result = pd.concat([table.reset_index(drop=True), prediction_frame(model, outputs)], axis=1)
    if out is None:
        result.to_csv(sys.stdout, index=False)
    elif out.suffix == ".parquet":
        result.to_parquet(out, index=False)
    else:
        result.to_csv(out, index=False)
