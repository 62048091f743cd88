"""The version manifest, ``xserve.yaml``: parsing and validation."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from xserve.errors import ManifestError
from xserve.explainers.registry import BUILTIN_JOB_METHODS, JOB_METHODS

__all__ = [
    "MANIFEST_NAME",
    "ExplainConfig",
    "Feature",
    "Manifest",
    "MlflowSource",
    "file_sha256",
    "load_manifest",
    "version_file",
]

MANIFEST_NAME = "xserve.yaml"
M = TypeVar("M", bound=BaseModel)
InlineMethod = Literal["auto", "tree_shap", "linear_shap", "none"]
BACKGROUND_ROWS_CAP = 1000
"""Default ``explain.background_rows``."""
MAX_BACKGROUND_ROWS = 100_000
Label = int | str


def _job_method(name: str) -> str:
    # The registry's names, not a fixed list: plugins add methods (entry points).
    if name not in JOB_METHODS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(JOB_METHODS.names())}")
    return name


JobMethod = Annotated[str, AfterValidator(_job_method)]


class Feature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    type: Literal["numeric", "integer", "boolean", "categorical"] = "numeric"
    description: str | None = None
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    nullable: bool = False
    """Whether ``null`` (a missing value, NaN to the model) is accepted."""
    personal: bool = False
    """Personal data: the audit log keeps a digest in place of the value."""

    @model_validator(mode="after")
    def _categories_for_categorical(self) -> Feature:
        if self.type == "categorical" and not self.categories:
            raise ValueError("a categorical feature needs 'categories'")
        return self


class ExplainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inline: InlineMethod = "auto"
    methods: list[JobMethod] = Field(default_factory=lambda: list(BUILTIN_JOB_METHODS))
    background_rows: int = Field(default=BACKGROUND_ROWS_CAP, ge=1, le=MAX_BACKGROUND_ROWS)
    """Background rows an interventional explainer (ONNX trees) takes as its reference: the
    whole background up to this many, else a seeded random sample of this many. A row's
    cost grows with the distinct patterns these rows make at each leaf."""


class MlflowSource(BaseModel):
    """Where a version deployed from MLflow came from: kept for the audit trail, and read
    by ``xserve sync`` and the MLflow plugin to tell which versions are theirs."""

    # protected_namespaces: MLflow's own name "model_uri" would otherwise warn.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_uri: str = Field(min_length=1)
    """The URI deployed, as given (``models:/credit/3``, ``models:/credit@champion``...)."""
    name: str | None = None
    """Registered model name; None for a URI outside the registry (``runs:/``, a path)."""
    version: str | None = None
    """Registered model version the URI resolved to."""
    alias: str | None = None
    """The alias followed, when the URI named one."""
    run_id: str | None = None


class Manifest(BaseModel):
    """One version's ``xserve.yaml``."""

    model_config = ConfigDict(extra="forbid")

    artifact: str = Field(min_length=1)
    flavor: str | None = None
    task: Literal["classification", "regression"] | None = None
    features: list[Feature] | None = None
    classes: list[Label] | None = None
    background: str | None = None
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    reason_codes: dict[str, str] = Field(default_factory=dict)
    adverse_class: Label | None = None
    adverse_direction: Literal["higher", "lower"] = "higher"
    sha256: dict[str, str] = Field(default_factory=dict)
    trusted: bool = False
    """Allow pickle-based artifacts (joblib/pkl), which can run code when loaded."""
    description: str | None = None
    intended_use: str | None = None
    limitations: str | None = None
    validation: dict[str, float] | None = None
    """Metrics measured when the model was validated (``auc: 0.84``...): the version's
    concept-drift baseline when it has no ``evaluation.json``."""
    mlflow: MlflowSource | None = None
    """Provenance of a version deployed from an MLflow registry."""

    # Field validators (not one model validator) so that errors name their key.
    @field_validator("features")
    @classmethod
    def _distinct_features(cls, features: list[Feature] | None) -> list[Feature] | None:
        names = [f.name for f in features or []]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate feature names: {dupes}")
        return features

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, classes: list[Label] | None) -> list[Label] | None:
        if classes is not None and len(set(classes)) != len(classes):
            raise ValueError("classes must be distinct")
        return classes

    @field_validator("reason_codes")
    @classmethod
    def _known_features(cls, codes: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        features = info.data.get("features")  # absent when it failed validation itself
        if features is not None:
            unknown = sorted(set(codes) - {f.name for f in features})
            if unknown:
                raise ValueError(f"unknown features: {unknown}")
        return codes

    @field_validator("adverse_class")
    @classmethod
    def _known_class(cls, adverse: Label | None, info: ValidationInfo) -> Label | None:
        classes = info.data.get("classes")
        if adverse is not None and classes is not None and adverse not in classes:
            raise ValueError(f"{adverse!r} is not one of the classes {classes}")
        return adverse


def _location(loc: tuple[int | str, ...]) -> str:
    # Errors of a whole object (a check across keys) name their keys themselves.
    return "".join(f"{p}." for p in loc[:-1]) + f"{loc[-1]}: " if loc else ""


def parse_yaml(path: Path, model: type[M], raw_text: bytes | str, empty: M | None = None) -> M:
    """Parse and validate one of the repository's YAML files; errors name the file and key.
    An empty file gives ``empty`` when one is given."""
    try:
        raw = yaml.safe_load(raw_text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None
    if raw is None and empty is not None:
        return empty
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        details = "; ".join(
            f"{_location(e['loc'])}{e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise ManifestError(f"{path}: {details}") from None


def _refusal(version_dir: Path, name: str, folder: bool = False) -> str | None:
    """Why ``version_dir / name`` may not be read as one of the version's files, or None:
    after resolving symlinks it must lie inside the version folder and be a regular file
    (or, with ``folder``, a folder whose every entry is a regular file or folder inside
    the version folder). Only ``stat``: a FIFO or device is refused without being opened
    (opening a FIFO blocks until something writes to it)."""
    try:
        root = version_dir.resolve()
        real = (version_dir / name).resolve()  # an absolute name replaces version_dir
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before 3.13)
        return f"{name} cannot be resolved: {exc}"
    if not real.is_relative_to(root):
        return f"{name} is outside the version folder"
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return f"{name} does not exist"
    except OSError as exc:
        return f"{name} cannot be read: {exc}"
    if stat.S_ISREG(mode):
        return None
    if not (folder and stat.S_ISDIR(mode)):
        return f"{name} is not a regular file"
    # os.walk enters the real subfolders; every other entry (a symlink, to a folder too)
    # must be a regular file inside the version folder.
    for parent, dirs, files in os.walk(real):
        for entry in sorted(dirs + files):
            path = Path(parent, entry)
            if entry in dirs and not path.is_symlink():
                continue
            why = _refusal(version_dir, path.relative_to(root).as_posix())
            if why is not None:
                return why
    return None


def version_file(version_dir: Path, name: str, key: str, folder: bool = False) -> Path:
    """``version_dir / name``, once it is known to be one of the version's own files (see
    :func:`_refusal`); otherwise a ManifestError naming ``key`` and why."""
    why = _refusal(version_dir, name, folder)
    if why is not None:
        raise ManifestError(f"{version_dir / MANIFEST_NAME}: {key}: {why}")
    return version_dir / name


def load_manifest(version_dir: Path) -> Manifest:
    """Read and validate ``version_dir/xserve.yaml``; errors name the file and key."""
    path = version_dir / MANIFEST_NAME
    why = _refusal(version_dir, MANIFEST_NAME)
    if why is not None:
        raise ManifestError(f"{path}: {'missing' if why.endswith('does not exist') else why}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:  # removed since
        raise ManifestError(f"{path}: missing") from None
    return parse_yaml(path, Manifest, text)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
