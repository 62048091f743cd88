"""Loading one version folder into a servable :class:`ModelVersion`."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xserve.errors import InvalidInput, ManifestError, ModelLoadError
from xserve.explainers.base import InlineExplainer
from xserve.repository.manifest import (
    Feature,
    Manifest,
    file_sha256,
    load_manifest,
    version_file,
)
from xserve.runtimes import Runtime, get_runtime, infer_flavor
from xserve.runtimes.base import Matrix, Task

__all__ = ["ModelVersion", "frame_to_matrix", "load_background", "load_version", "read_table"]


# eq=False: compared and hashed by identity, as the WeakKeyDictionary keys it is.
@dataclass(frozen=True, eq=False)
class ModelVersion:
    """A loaded, immutable model version: manifest, runtime and reference data.

    Load hooks (``ModelRepository(on_load=...)``) return changed copies of it
    (``dataclasses.replace``): the serving layer's ``attach_inline`` adds ``inline``.
    """

    name: str
    version: str
    path: Path
    manifest: Manifest
    runtime: Runtime
    features: list[Feature]
    task: Task
    classes: list[Any] | None
    digest: str
    """sha256 of the artifact (of its files, for a folder)."""
    background: Matrix | None = None
    inline: InlineExplainer | None = None
    """The exact explainer, once attached (``xserve.explainers.attach``)."""
    inline_error: str | None = None
    """Why there is no inline explainer (None until one was looked for)."""

    @property
    def flavor(self) -> str:
        return self.runtime.flavor

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def describe(self) -> dict[str, Any]:
        """The repository's facts; ``xserve.explainers.describe.describe_version`` adds
        the ``explain`` section."""
        m = self.manifest
        return {
            "name": self.name,
            "version": self.version,
            "flavor": self.flavor,
            "task": self.task,
            "features": [f.model_dump(exclude_none=True) for f in self.features],
            "classes": self.classes,
            "artifact_sha256": self.digest,
            "description": m.description,
            "intended_use": m.intended_use,
            "limitations": m.limitations,
        }


def _digest(artifact: Path) -> str:
    if artifact.is_file():
        return file_sha256(artifact)
    h = hashlib.sha256()
    for f in sorted(p for p in artifact.rglob("*") if p.is_file()):
        h.update(f.relative_to(artifact).as_posix().encode() + b"\0" + file_sha256(f).encode())
    return h.hexdigest()


def _digest_files(version_dir: Path, manifest: Manifest, artifact: Path | None) -> dict[str, Path]:
    """The files the ``sha256`` map names, each checked to be the version's own regular
    file (the artifact's folder too, for a folder artifact) before anything reads it."""
    files = {}
    for rel in manifest.sha256:
        try:
            folder = artifact is not None and (version_dir / rel).resolve() == artifact.resolve()
        except (OSError, RuntimeError):  # a symlink loop: version_file says so
            folder = False
        files[rel] = version_file(version_dir, rel, f"sha256.{rel}", folder=folder)
    return files


def _check_digests(manifest: Manifest, files: dict[str, Path]) -> dict[str, str]:
    """Compare every listed digest with its file; return the digests computed."""
    computed = {}
    for rel, target in files.items():
        expected = manifest.sha256[rel]
        actual = _digest(target)
        if actual != expected.lower().removeprefix("sha256:"):
            raise ModelLoadError(f"{target}: sha256 mismatch (manifest {expected}, file {actual})")
        computed[rel] = actual
    return computed


def _resolve_features(manifest: Manifest, runtime: Runtime, where: Path) -> list[Feature]:
    carried = runtime.feature_names
    if manifest.features is not None:
        names = [f.name for f in manifest.features]
        if carried is not None and carried != names:
            raise ManifestError(f"{where}: features: {names} differ from the artifact's {carried}")
        if runtime.n_features is not None and runtime.n_features != len(names):
            raise ManifestError(
                f"{where}: features: {len(names)} listed, the model takes {runtime.n_features}"
            )
        return manifest.features
    if carried is None:
        raise ManifestError(f"{where}: features: required, the artifact carries no feature names")
    return [Feature(name=n) for n in carried]


def _resolve_classes(manifest: Manifest, runtime: Runtime, where: Path) -> list[Any] | None:
    if runtime.task == "regression":
        return None
    if manifest.classes is None:
        return runtime.classes
    if runtime.classes is not None and len(runtime.classes) != len(manifest.classes):
        raise ManifestError(
            f"{where}: classes: {len(manifest.classes)} listed, "
            f"the model has {len(runtime.classes)}"
        )
    return list(manifest.classes)


def frame_to_matrix(frame: pd.DataFrame, features: list[Feature], where: str) -> Matrix:
    """Select and encode the feature columns of a table, in feature order."""
    missing = [f.name for f in features if f.name not in frame.columns]
    if missing:
        raise InvalidInput(f"{where}: missing feature columns {missing}")
    columns = []
    for f in features:
        col = frame[f.name]
        if f.type == "categorical" and f.categories and col.dtype == object:
            col = col.map({c: i for i, c in enumerate(f.categories)})
        try:
            columns.append(pd.to_numeric(col, errors="raise").to_numpy(dtype=np.float64))
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{where}: column {f.name}: {exc}") from None
    return np.column_stack(columns)


def read_table(path: Path) -> pd.DataFrame:
    """A CSV (header row of names) or Parquet file."""
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def load_background(path: Path, features: list[Feature]) -> Matrix:
    """Read a CSV or Parquet reference sample into feature order."""
    return frame_to_matrix(read_table(path), features, str(path))


def _background_file(version_dir: Path, manifest: Manifest) -> Path | None:
    """The manifest's background, else ``background.csv`` if present (a regular file of
    the version's own: see ``version_file``)."""
    name = manifest.background or (
        "background.csv" if os.path.lexists(version_dir / "background.csv") else None
    )
    return None if name is None else version_file(version_dir, name, "background")


def _version_background(path: Path | None, features: list[Feature], where: Path) -> Matrix | None:
    """Read the background into feature order; errors name the key."""
    if path is None:
        return None
    try:
        return load_background(path, features)
    except InvalidInput as exc:
        raise ManifestError(f"{where}: background: {exc.message}") from None
    except ValueError as exc:  # unreadable CSV/Parquet (pandas and pyarrow errors)
        raise ManifestError(f"{where}: background: {path}: {exc}") from None


def load_version(name: str, version: str, version_dir: Path, threads: int = 1) -> ModelVersion:
    """Validate and load ``version_dir``; raises ManifestError or ModelLoadError.

    No inline explainer is built (job workers need none): ``attach_inline`` adds it.
    """
    manifest = load_manifest(version_dir)
    where = version_dir / "xserve.yaml"
    # A version is its folder: every file named is checked to be a regular file inside it
    # (an MLflow model may be a folder) before any is opened. An MLflow registry URI
    # (``models:/...``) is downloaded by the mlflow runtime.
    registry_uri = manifest.artifact.startswith("models:/")
    artifact = (
        version_dir / manifest.artifact
        if registry_uri
        else version_file(
            version_dir, manifest.artifact, "artifact", folder=manifest.flavor in (None, "mlflow")
        )
    )
    background_file = _background_file(version_dir, manifest)
    digests = _check_digests(
        manifest, _digest_files(version_dir, manifest, None if registry_uri else artifact)
    )
    try:
        runtime_class = get_runtime(
            manifest.flavor or ("mlflow" if registry_uri else infer_flavor(artifact))
        )
    except ManifestError as exc:
        raise ManifestError(f"{where}: flavor: {exc.message}") from None
    runtime = runtime_class(artifact, manifest, threads)
    if manifest.task is not None and manifest.task != runtime.task:
        raise ManifestError(
            f"{where}: task: {manifest.task}, but the model is a {runtime.task} model"
        )
    features = _resolve_features(manifest, runtime, where)
    background = _version_background(background_file, features, where)
    return ModelVersion(
        name=name,
        version=version,
        path=version_dir,
        manifest=manifest,
        runtime=runtime,
        features=features,
        task=runtime.task,
        classes=_resolve_classes(manifest, runtime, where),
        digest=digests.get(manifest.artifact) or _digest(runtime.artifact),
        background=background,
    )
