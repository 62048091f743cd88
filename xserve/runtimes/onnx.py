"""ONNX models through onnxruntime; classifiers with or without ZipMap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from xserve.errors import ModelLoadError
from xserve.repository.manifest import Manifest
from xserve.runtimes.base import Matrix, Runtime

__all__ = ["OnnxRuntime"]

_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


def _class_labels(model: onnx.ModelProto) -> list[Any] | None:
    """Class labels from the graph's ZipMap or classifier node, in output order."""
    for node in model.graph.node:
        for attr in node.attribute:
            # ZipMap and TreeEnsembleClassifier say int64s; LinearClassifier and SVMClassifier ints.
            if attr.name in ("classlabels_int64s", "classlabels_ints") and attr.ints:
                return [int(v) for v in attr.ints]
            if attr.name == "classlabels_strings" and attr.strings:
                return [v.decode() for v in attr.strings]
    return None


class OnnxRuntime(Runtime):
    flavor = "onnx"
    extensions = (".onnx",)

    def __init__(self, artifact: Path, manifest: Manifest, threads: int = 1) -> None:
        super().__init__(artifact, manifest, threads)
        try:
            self.model = onnx.load(str(artifact))
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(
                self.model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(f"{artifact}: not a loadable ONNX model: {exc}") from None
        inputs = self.session.get_inputs()
        # One matrix input, or one [n, 1] input per feature (named after it).
        self._per_feature = len(inputs) > 1
        self._input_names = [i.name for i in inputs]
        self._dtype = _DTYPES.get(inputs[0].type)
        if self._dtype is None:
            raise ModelLoadError(f"{artifact}: input type {inputs[0].type} is not supported")
        if self._per_feature:
            self.feature_names = self._input_names
        else:
            width = inputs[0].shape[-1] if inputs[0].shape else None
            self._width = width if isinstance(width, int) else None
        self._pick_outputs(artifact)

    def _pick_outputs(self, artifact: Path) -> None:
        outputs = self.session.get_outputs()
        probs = [o for o in outputs if o.type.startswith("seq(map") or "prob" in o.name.lower()]
        if probs:
            self.task = "classification"
            self._output = probs[0].name
            self._zipmap = probs[0].type.startswith("seq(map")
            self.classes = _class_labels(self.model)
            return
        values = [o for o in outputs if o.type in _DTYPES]
        if not values:
            raise ModelLoadError(f"{artifact}: no probability or numeric output found")
        self.task = "regression"
        self._output = values[0].name
        self._zipmap = False

    @property
    def native(self) -> onnx.ModelProto:
        return self.model

    @property
    def n_features(self) -> int | None:
        return len(self._input_names) if self._per_feature else self._width

    def predict(self, x: Matrix) -> Matrix:
        x = x.astype(self._dtype, copy=False)
        if self._per_feature:
            feed = {n: x[:, [i]] for i, n in enumerate(self._input_names)}
        else:
            feed = {self._input_names[0]: x}
        (out,) = self.session.run([self._output], feed)
        if self._zipmap:
            # Index by label: the map's own key order is not the model's class order.
            labels = self.classes or list(out[0])
            return np.array([[row[c] for c in labels] for row in out], dtype=np.float64)
        result = np.asarray(out, dtype=np.float64)
        return result.reshape(len(x)) if self.task == "regression" else result
