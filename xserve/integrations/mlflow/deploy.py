"""MLflow models into the repository: deploy, find, remove, and follow an alias.

A deployment is a model folder of the repository (``<models_dir>/<name>/``); its
versions deployed from MLflow carry their provenance in the manifest's ``mlflow`` key,
which is how they are found again (by ``delete`` and ``xserve sync``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xserve.errors import ManifestError, XServeError
from xserve.integrations.mlflow.convert import (
    artifact_classes,
    choose_flavor,
    manifest_doc,
    write_artifact,
)
from xserve.integrations.mlflow.source import Source, download, download_background, resolve
from xserve.repository.deploy import publish_version, staging_folder
from xserve.repository.layout import version_folders
from xserve.repository.manifest import MANIFEST_NAME, Manifest, load_manifest

__all__ = ["Deployed", "deploy_model", "deployed_versions", "remove_versions", "sync_alias"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
CONFIG_KEYS = ("background", "classes")


@dataclass(frozen=True)
class Deployed:
    """One version folder and its manifest (None when the manifest does not parse)."""

    version: str
    path: Path
    manifest: Manifest | None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "path": str(self.path)}
        if self.manifest is not None:
            out["flavor"] = self.manifest.flavor
            if self.manifest.mlflow is not None:
                out["mlflow"] = self.manifest.mlflow.model_dump(exclude_none=True)
        return out


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ManifestError(
            f"deployment name {name!r}: letters, digits, '.', '_' and '-', not starting with "
            "a dot (it is a folder of the model repository)"
        )


def deployed_versions(root: Path, name: str) -> list[Deployed]:
    """Every version folder of model ``name``, oldest first."""
    found = []
    # with_manifest=False: still listed, a broken version is a version
    for version, path in version_folders(root / name, with_manifest=False).items():
        try:
            manifest: Manifest | None = load_manifest(path)
        except ManifestError:
            manifest = None
        found.append(Deployed(version, path, manifest))
    return found


def _classes(value: Any) -> list[Any] | None:
    if value is None or isinstance(value, list):
        return value
    return [c.strip() for c in str(value).split(",") if c.strip()]


def _background(value: Any, source: Source, scratch: Path) -> Path | None:
    """The configured background (a path or an MLflow artifact URI), else the one the
    model's run logged, else None."""
    if value is None:
        return download_background(source.run_id, scratch / "background")
    path = Path(str(value))
    if path.is_file():
        return path
    return download(str(value), scratch / "background")


def deploy_model(
    root: Path,
    name: str,
    model_uri: str,
    flavor: str | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Download ``model_uri`` from MLflow and add it as the next version of ``name``.

    The version is assembled in a hidden folder, checked to load and predict, and only
    then renamed into place, exactly as ``xserve deploy`` does.
    """
    check_name(name)
    config = dict(config or {})
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ManifestError(f"unknown config keys {unknown}; known: {list(CONFIG_KEYS)}")
    return _deploy(root, name, resolve(model_uri), flavor, config)


def _deploy(
    root: Path, name: str, source: Source, flavor: str | None, config: dict[str, Any]
) -> Path:
    import mlflow.models

    model_uri = source.model_uri
    with tempfile.TemporaryDirectory(prefix="xserve-mlflow-") as tmp:
        scratch = Path(tmp)
        local = download(source.download_uri, scratch / "model")
        meta = mlflow.models.Model.load(str(local / "MLmodel"))
        chosen = choose_flavor(meta.flavors, flavor)
        background = _background(config.get("background"), source, scratch)
        with staging_folder(root, name) as staged:
            try:
                artifact = write_artifact(chosen, local, staged)
                bg_name = None
                if background is not None:
                    bg_name = "background" + background.suffix
                    shutil.copy2(background, staged / bg_name)
                classes = _classes(config.get("classes")) or artifact_classes(chosen, local)
                doc = manifest_doc(staged, chosen, artifact, meta, bg_name, classes)
                if source.description:
                    doc["description"] = source.description
                doc["mlflow"] = source.provenance()
                (staged / MANIFEST_NAME).write_text(
                    yaml.safe_dump(doc, sort_keys=False), encoding="utf-8"
                )
                return publish_version(name, staged)
            except XServeError as exc:
                message = exc.message.replace(f"{staged}/", "")  # the staging folder is noise
                raise type(exc)(f"cannot deploy {model_uri} as {name!r}: {message}") from None


def remove_versions(root: Path, name: str) -> list[str]:
    """Remove the versions of ``name`` deployed from MLflow; the versions removed.

    Each folder is first renamed to a hidden name (atomic: a serving process sees the
    version go at once, never half-deleted). The model folder goes too once no version
    is left in it.
    """
    check_name(name)
    removed = []
    for entry in deployed_versions(root, name):
        if entry.manifest is None or entry.manifest.mlflow is None:
            continue
        hidden = Path(tempfile.mkdtemp(prefix=f".removing-{entry.version}-", dir=root / name))
        entry.path.rename(hidden / entry.version)
        shutil.rmtree(hidden)
        removed.append(entry.version)
    if removed and not deployed_versions(root, name):
        shutil.rmtree(root / name, ignore_errors=True)
    return removed


def sync_alias(root: Path, name: str, alias: str) -> tuple[Source, Path | None]:
    """Make the version ``models:/name@alias`` points to the newest version of ``name``.

    Deploys it unless the newest version in the repository already came from that very
    registry version; so moving the alias back to an older registry version deploys that
    one again, as a new version, and it serves.
    """
    check_name(name)
    source = resolve(f"models:/{name}@{alias}")
    versions = deployed_versions(root, name)
    newest = versions[-1].manifest if versions else None
    if (
        newest is not None
        and newest.mlflow is not None
        and (newest.mlflow.name == source.name and newest.mlflow.version == source.version)
    ):
        return source, None
    # The source resolved above, not the alias again: it may have moved since.
    return source, _deploy(root, name, source, None, {})
