"""The repository's folder layout: ``<root>/<model>/<version>/xserve.yaml``.

The one rule for version folders: the name is ASCII digits (so never hidden: a deploy
assembles a version in a hidden folder and renames it into place), and the folder holds
``xserve.yaml``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from xserve.repository.manifest import MANIFEST_NAME

__all__ = [
    "is_version_name",
    "next_version",
    "read_regular_file",
    "version_folders",
    "version_key",
]


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, read only if it is a regular file of at most ``limit`` bytes;
    else OSError. Opened non-blocking and checked on the open descriptor, so a FIFO put in
    its place can neither block the reader nor slip in between a check and the read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path.name} is not a regular file")
        if st.st_size > limit:
            raise OSError(f"{path.name} is larger than {limit} bytes")
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def is_version_name(name: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts "²", which int() refuses."""
    return name.isascii() and name.isdigit()


def version_key(version: str) -> tuple[int, str]:
    """Numeric versions sort numerically ("10" after "9")."""
    return (int(version), "") if is_version_name(version) else (-1, version)


def version_folders(model_dir: Path, with_manifest: bool = True) -> dict[str, Path]:
    """The model's version folders by version, in version order.

    ``with_manifest=False`` also counts folders without ``xserve.yaml`` (yet): a copy in
    progress, or a broken version, still holds its number.
    """
    if not model_dir.is_dir():
        return {}
    found = {
        p.name: p
        for p in model_dir.iterdir()
        if is_version_name(p.name)
        and p.is_dir()
        and (not with_manifest or (p / MANIFEST_NAME).exists())
    }
    return dict(sorted(found.items(), key=lambda item: version_key(item[0])))


def next_version(model_dir: Path) -> str:
    """The number a new version of the model takes: one past every version folder."""
    taken = version_folders(model_dir, with_manifest=False)
    return str(max((int(v) for v in taken), default=0) + 1)
