"""LightGBM boosters: the Booster text format (``model.txt``), or its JSON dump.

A text model is loaded by LightGBM and predicted by it (on one thread for small
batches). A JSON dump (``Booster.dump_model()``, ``.json``) cannot be loaded back into
LightGBM, so its trees are walked here with LightGBM's own split rules, in float64 as
LightGBM sums them, and the objective's link applied: the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from xserve.errors import ModelLoadError
from xserve.explainers.lightgbm_shap import (
    IDENTITY_OBJECTIVES,
    as_lightgbm_reads,
    lightgbm_ensemble,
    objective_of,
)
from xserve.explainers.path_shap import PathShap
from xserve.repository.manifest import Manifest
from xserve.runtimes.base import Matrix, Runtime, sigmoid, softmax

__all__ = ["LightGBMRuntime"]

PARALLEL_ROWS = 64
"""Fewer rows than this are predicted on one thread: waking LightGBM's OpenMP threads
costs more than a small batch's prediction."""

_CLASSIFIERS = ("binary", "multiclass", "multiclassova")
# A JSON dump's link, raw score to prediction, for the objectives LightGBM trains.
_LOG_LINK = ("poisson", "gamma", "tweedie")


class LightGBMRuntime(Runtime):
    flavor = "lightgbm"
    extensions = (".txt", ".lgb")

    def __init__(self, artifact: Path, manifest: Manifest, threads: int = 1) -> None:
        super().__init__(artifact, manifest, threads)
        self.booster: lgb.Booster | None = None
        self._trees: PathShap | None = None
        if artifact.suffix.lower() == ".json":
            self.dump = self._read_dump(artifact)
            try:
                self._trees = PathShap(lightgbm_ensemble(self.dump))
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelLoadError(f"{artifact}: not a LightGBM JSON dump: {exc}") from None
        else:
            try:
                self.booster = lgb.Booster(model_file=str(artifact))
            except lgb.basic.LightGBMError as exc:
                raise ModelLoadError(f"{artifact}: not a loadable LightGBM model: {exc}") from None
            self.dump = self.booster.dump_model()
        self.objective, self.params = objective_of(self.dump)
        self.n_outputs = int(self.dump["num_tree_per_iteration"])
        self._n_features = int(self.dump["max_feature_idx"]) + 1
        names = [str(n) for n in self.dump.get("feature_names") or []]
        # LightGBM names unnamed columns Column_0, Column_1...: no names of the model's own
        if names and names != [f"Column_{i}" for i in range(len(names))]:
            self.feature_names = names
        if self.objective in _CLASSIFIERS:
            self.task = "classification"
            self.classes = list(range(2 if self.objective == "binary" else self.n_outputs))
        else:
            self.task = "regression"
        if self._trees is not None and not self._known_link():
            raise ModelLoadError(
                f"{artifact}: objective {self.objective!r} of a JSON dump is not served; "
                "save the booster as text (Booster.save_model) instead"
            )

    @staticmethod
    def _read_dump(artifact: Path) -> dict[str, Any]:
        try:
            dump = json.loads(artifact.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelLoadError(f"{artifact}: not a LightGBM JSON dump: {exc}") from None
        if not isinstance(dump, dict) or "tree_info" not in dump:
            raise ModelLoadError(f"{artifact}: not a LightGBM JSON dump (no tree_info)")
        return dump

    def _known_link(self) -> bool:
        return (
            self.objective in _CLASSIFIERS
            or self.objective in _LOG_LINK
            or self.objective in IDENTITY_OBJECTIVES
        )

    @property
    def native(self) -> Any:
        return self.booster if self.booster is not None else self.dump

    @property
    def n_features(self) -> int:
        return self._n_features

    def raw_score(self, x: Matrix) -> Matrix:
        """The score the prediction is the link of: the sum of the trees' leaves (their
        mean over the iterations in random forest mode), (n,) for one output, (n,
        outputs) for several."""
        if self._trees is not None:
            raw = self._trees.predict(as_lightgbm_reads(x))
            return raw[:, 0] if raw.shape[1] == 1 else raw
        threads = 1 if len(x) < PARALLEL_ROWS else self.threads
        out = self.booster.predict(x, raw_score=True, num_threads=threads)  # type: ignore[union-attr]
        # LightGBM's raw score sums a random forest's trees; its prediction averages them
        iterations = max(1, len(self.dump["tree_info"]) // self.n_outputs)
        divisor = iterations if self.dump.get("average_output") else 1
        return np.asarray(out, dtype=np.float64) / divisor

    def _link(self, raw: Matrix) -> Matrix:
        """LightGBM's own transform of a JSON dump's raw scores."""
        scale = float(self.params.get("sigmoid", "1"))
        if self.objective in ("binary", "multiclassova"):
            return sigmoid(scale * raw)
        if self.objective == "multiclass":
            return softmax(raw)
        if self.objective in _LOG_LINK:
            return np.exp(raw)
        if "sqrt" in self.params:
            return np.sign(raw) * raw * raw
        return raw

    def predict(self, x: Matrix) -> Matrix:
        if self._trees is not None:
            out = self._link(self.raw_score(x))
        else:
            threads = 1 if len(x) < PARALLEL_ROWS else self.threads
            assert self.booster is not None
            out = np.asarray(self.booster.predict(x, num_threads=threads), dtype=np.float64)
        if self.task == "classification" and out.ndim == 1:
            out = np.column_stack([1.0 - out, out])
        return out
