"""``xserve deploy``: a new version folder with an inferred, validated manifest."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from xserve.repository.manifest import MANIFEST_NAME, file_sha256
from xserve.repository.repository import version_key
from xserve.repository.version import load_version, read_table
from xserve.runtimes import get_runtime, infer_flavor
from xserve.repository.manifest import Manifest

__all__ = ["deploy_artifact", "next_version"]


def next_version(model_dir: Path) -> str:
    existing = [p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return str(max((version_key(v)[0] for v in existing), default=0) + 1)


def _infer_manifest(
    staged: Path, artifact: str, background: str | None, flavor: str | None,
    classes: list[Any] | None, trusted: bool,
) -> dict[str, Any]:
    flavor = flavor or infer_flavor(staged / artifact)
    doc: dict[str, Any] = {"flavor": flavor, "artifact": artifact}
    if trusted:
        doc["trusted"] = True
    runtime = get_runtime(flavor)(staged / artifact, Manifest(artifact=artifact, trusted=trusted))
    doc["task"] = runtime.task
    if runtime.feature_names is None and background is not None:
        header = list(read_table(staged / background).columns)
        doc["features"] = [{"name": str(n), "type": "numeric"} for n in header]
    if classes is not None:
        doc["classes"] = classes
    if background is not None:
        doc["background"] = background
    if (staged / artifact).is_file():
        doc["sha256"] = {artifact: file_sha256(staged / artifact)}
    return doc


def deploy_artifact(
    root: Path,
    name: str,
    artifact: Path,
    background: Path | None = None,
    flavor: str | None = None,
    classes: list[Any] | None = None,
    trusted: bool = False,
) -> Path:
    """Copy ``artifact`` into ``root/name/<next>/`` and write its manifest.

    The folder is assembled under a hidden name and renamed into place only
    once it loads, so a serving process never sees half a version.
    """
    model_dir = root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".deploy-", dir=model_dir))
    try:
        if artifact.is_dir():
            shutil.copytree(artifact, staged / artifact.name)
        else:
            shutil.copy2(artifact, staged / artifact.name)
        bg_name = None
        if background is not None:
            bg_name = "background" + background.suffix
            shutil.copy2(background, staged / bg_name)
        doc = _infer_manifest(staged, artifact.name, bg_name, flavor, classes, trusted)
        (staged / MANIFEST_NAME).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        load_version(name, "new", staged)  # refuse to deploy what would not serve
        os.chmod(staged, 0o755)
        while True:
            target = model_dir / next_version(model_dir)
            try:
                staged.rename(target)  # atomic; fails if another deploy took the number
                return target
            except OSError:
                if not target.exists():
                    raise
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
