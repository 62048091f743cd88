"""``xserve deploy``: a new version folder with an inferred, validated manifest."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xserve.errors import ManifestError, ModelLoadError, ModelNotFound, ModelNotReady, XServeError
from xserve.explainers.attach import attach_inline
from xserve.explainers.describe import explain_instead
from xserve.repository.layout import next_version
from xserve.repository.manifest import MANIFEST_NAME, Manifest, file_sha256
from xserve.repository.repository import ModelRepository
from xserve.repository.version import ModelVersion, load_version, read_table
from xserve.runtimes import get_runtime, infer_flavor

__all__ = [
    "INHERITED",
    "Check",
    "Deployed",
    "NoInlineExplainer",
    "deploy_artifact",
    "inheritable",
    "publish",
    "publish_version",
    "serving_version",
    "staging_folder",
]

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
_SMOKE_ROWS = 8


INHERITED = (
    "features",
    "classes",
    "adverse_class",
    "adverse_direction",
    "reason_codes",
    "explain",
    "description",
    "intended_use",
    "limitations",
)
"""What a new version takes from the serving one unless told otherwise: what the model
means (features with their types, descriptions and personal flags, reason texts, the
adverse class), not what it is (flavor, artifact, digests)."""


def inheritable(model: ModelVersion) -> dict[str, Any]:
    """The keys of ``model``'s manifest that a new version of it inherits, as written there
    (the manifest loaded, so it parses)."""
    doc = yaml.safe_load((model.path / MANIFEST_NAME).read_text(encoding="utf-8")) or {}
    return {k: doc[k] for k in INHERITED if k in doc}


def _infer_manifest(
    staged: Path,
    artifact: str,
    background: str | None,
    flavor: str | None,
    classes: list[Any] | None,
    trusted: bool,
    base: dict[str, Any],
) -> dict[str, Any]:
    flavor = flavor or infer_flavor(staged / artifact)
    doc: dict[str, Any] = {"flavor": flavor, "artifact": artifact, **base}
    if trusted:
        doc["trusted"] = True
    runtime = get_runtime(flavor)(staged / artifact, Manifest(artifact=artifact, trusted=trusted))
    doc["task"] = runtime.task
    if runtime.feature_names is None and "features" not in doc:
        if background is None:
            raise ManifestError(
                "the artifact carries no feature names: pass --background, a CSV or Parquet "
                "sample whose header row names the features in the model's order"
            )
        header = list(read_table(staged / background).columns)
        doc["features"] = [{"name": str(n), "type": "numeric"} for n in header]
    if classes is not None:
        doc["classes"] = classes
    if background is not None:
        doc["background"] = background
    if (staged / artifact).is_file():
        doc["sha256"] = {artifact: file_sha256(staged / artifact)}
    return doc


class NoInlineExplainer(ModelLoadError):
    """The version would serve without an inline explainer, and that was not allowed."""


@dataclass(frozen=True)
class Deployed:
    """A published version and what explains it."""

    folder: Path
    inline: str | None
    """The inline explainer's method (``tree_shap``...), None when there is none."""
    inline_output: str | None
    inline_error: str | None
    """Why there is no inline explainer."""
    instead: str
    """What explains it without one (``POST /v1/models/{m}/explain`` and its methods)."""

    def summary(self) -> str:
        """What ``explain=true`` does for this version, in a sentence."""
        if self.inline is not None:
            return f"inline explainer: {self.inline} ({self.inline_output} space)"
        return f"NO inline explainer: {self.inline_error}. {_without_inline(self)}"


def _without_inline(deployed: Deployed) -> str:
    return (
        "Predictions serve, but predict?explain=true answers 422 not_explainable; "
        f"for explanations {deployed.instead}"
    )


def _check_serves(name: str, staged: Path) -> ModelVersion:
    """Refuse to deploy what would not serve: load it as a server does (inline explainer
    included: one that cannot be built is the version's inline_error), and predict on the
    background. Returns the version as loaded."""
    model = attach_inline(load_version(name, "new", staged))
    if model.background is not None and len(model.background):
        try:
            model.runtime.predict(model.background[:_SMOKE_ROWS])
        except Exception as exc:
            raise ModelLoadError(f"predicting on the background failed: {exc}") from None
    return model


@contextlib.contextmanager
def staging_folder(root: Path, name: str) -> Iterator[Path]:
    """A hidden folder in ``root/name`` to assemble a version in (the repository ignores
    hidden folders). On an exception it is removed, and so is ``root/name`` when this
    created it: a failed deploy leaves nothing behind."""
    model_dir = root / name
    created = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".deploy-", dir=model_dir))
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):  # only if empty: a concurrent deploy may own it
                model_dir.rmdir()
        raise


Check = Callable[[ModelVersion], None]
"""Run on the staged version once it loads, before it is published: raise to refuse it
(e.g. a promotion gate); it may add files to the folder (``model.path``)."""


def publish(
    name: str, staged: Path, allow_no_inline: bool = True, check: Check | None = None
) -> Deployed:
    """Check that the assembled ``staged`` folder serves (and passes ``check``), then rename
    it to the next version of its model. Without ``allow_no_inline``, a version that would
    have no inline explainer (unless its manifest turns them off) is refused with
    :class:`NoInlineExplainer`."""
    model = _check_serves(name, staged)
    inline = model.inline
    deployed = Deployed(
        staged,
        inline.method if inline else None,
        inline.output if inline else None,
        model.inline_error,
        explain_instead(model),
    )
    if inline is None and not allow_no_inline and model.manifest.explain.inline != "none":
        raise NoInlineExplainer(
            f"it would serve without an inline explainer: {model.inline_error}. "
            f"{_without_inline(deployed)}. Pass --allow-no-inline to deploy it anyway"
        )
    if check is not None:
        check(model)
    os.chmod(staged, 0o755)
    model_dir = staged.parent
    while True:
        target = model_dir / next_version(model_dir)
        try:
            staged.rename(target)  # atomic; fails if another deploy took the number
            return dataclasses.replace(deployed, folder=target)
        except OSError:
            if not target.exists():
                raise


def publish_version(name: str, staged: Path) -> Path:
    """:func:`publish`, with or without an inline explainer; returns the version folder."""
    return publish(name, staged).folder


def serving_version(root: Path, name: str) -> ModelVersion | None:
    """The version of ``name`` serving now under its traffic policy (loaded with its inline
    explainer), or None when the model has none."""
    repository = ModelRepository(root, on_load=[attach_inline])
    repository.scan(only=name)
    try:
        return repository.get(name)
    except (ModelNotFound, ModelNotReady):
        return None


def _background_path(model: ModelVersion) -> Path | None:
    name = model.manifest.background
    return None if name is None else model.path / name


def _as_given(message: str, staged: Path, originals: dict[str, Path]) -> str:
    """The error with the caller's own files named in place of their staged copies."""
    message = message.replace(f"{staged / MANIFEST_NAME}: ", "")
    for staged_name, original in originals.items():
        message = message.replace(str(staged / staged_name), str(original))
    return message


def deploy_artifact(
    root: Path,
    name: str,
    artifact: Path,
    background: Path | None = None,
    flavor: str | None = None,
    classes: list[Any] | None = None,
    trusted: bool = False,
    allow_no_inline: bool = False,
    serving: ModelVersion | None = None,
    manifest: dict[str, Any] | None = None,
    check: Check | None = None,
) -> Deployed:
    """Copy ``artifact`` into ``root/name/<next>/`` and write its manifest.

    The manifest inherits from ``serving`` (the version serving now: see
    :data:`INHERITED`; its background too, unless one is given), then takes the keys of
    ``manifest``, then the flags given.

    The folder is assembled under a hidden name and renamed into place only
    once it loads, so a serving process never sees half a version; a failed
    deploy leaves nothing behind. A version without an inline explainer is
    refused (:class:`NoInlineExplainer`) unless ``allow_no_inline``.
    """
    if not trusted and artifact.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"cannot deploy {artifact} as {name!r}: pickle files can run code when loaded; "
            "save the model with skops, or pass --trusted if you trust this file"
        )
    originals = {artifact.name: artifact}
    with staging_folder(root, name) as staged:
        try:
            if artifact.is_dir():
                shutil.copytree(artifact, staged / artifact.name)
            else:
                shutil.copy2(artifact, staged / artifact.name)
            bg_name = None
            if background is None and serving is not None and "background" not in (manifest or {}):
                background = _background_path(serving)
            if background is not None:
                bg_name = "background" + background.suffix
                shutil.copy2(background, staged / bg_name)
                originals[bg_name] = background
            base = {**(inheritable(serving) if serving is not None else {}), **(manifest or {})}
            doc = _infer_manifest(staged, artifact.name, bg_name, flavor, classes, trusted, base)
            (staged / MANIFEST_NAME).write_text(
                yaml.safe_dump(doc, sort_keys=False), encoding="utf-8"
            )
            return publish(name, staged, allow_no_inline, check)
        except XServeError as exc:
            message = _as_given(exc.message, staged, originals)
            raise type(exc)(f"cannot deploy {artifact} as {name!r}: {message}") from None
