"""Private files: what xserve creates to hold secrets or records is its owner's alone.

Folders xserve creates are 0700, files 0600, set as they are created (never a window in
which another user could open them). Folders and files that already exist keep their
modes: an operator who shares one with a group on purpose keeps that choice.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FILE_MODE", "FOLDER_MODE", "append_line", "create_private", "private_folder"]

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def private_folder(path: Path) -> None:
    """Create ``path`` and each missing folder above it with mode 0700 (``Path.mkdir``
    with ``parents=True`` would give the parents the default mode)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=FOLDER_MODE)
        except FileExistsError:  # another process made it meanwhile, or it is no folder
            if not folder.is_dir():
                raise


def create_private(path: Path, data: bytes, exclusive: bool = True) -> None:
    """Write ``data`` to a new file ``path`` (mode 0600, in a private folder if it must be
    made), fsynced; ``exclusive``: refuse to replace an existing file."""
    private_folder(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    _sync_folder(path.parent)


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` (created 0600 in a private folder) in one
    write, fsynced: lines appended by several processes never interleave."""
    private_folder(path.parent)
    data = (line.rstrip("\n") + "\n").encode()
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"{path}: short write ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:  # the new name, too, must survive a crash
        _sync_folder(path.parent)


def _sync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
