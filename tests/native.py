"""Reference predictions straight from each model's own library."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import xgboost as xgb


def native_outputs(flavor: str, artifact: Path, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Probabilities (n, classes) or values (n,) computed by the native library."""
    if flavor == "xgboost":
        booster = xgb.Booster()
        booster.load_model(str(artifact))
        p = booster.predict(xgb.DMatrix(x, feature_names=booster.feature_names))
        return (
            np.column_stack([1 - p, p]) if p.ndim == 1 and "binary" in booster.save_config() else p
        )
    if flavor == "sklearn":
        import skops.io as sio

        model: Any = sio.load(artifact, trusted=sio.get_untrusted_types(file=artifact))
        return np.asarray(
            model.predict_proba(x) if hasattr(model, "predict_proba") else model.predict(x)
        )
    if flavor == "onnx":
        sess = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
        outs = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})
        probs = outs[1]
        if isinstance(probs, list):  # ZipMap
            keys = sorted(probs[0])
            return np.array([[row[k] for k in keys] for row in probs])
        return np.asarray(probs)
    raise ValueError(flavor)
