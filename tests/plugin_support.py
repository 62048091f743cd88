"""Plugins as pip installs them: a throwaway distribution's metadata in a folder that a
fresh Python process finds on its path.

A registry reads its plugins from the installed distributions' entry points once per
process, so a plugin test runs its checks in a subprocess (``run_with_plugin``): the
test process's registries never see the plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLUGIN_DISTRIBUTION = "xserve-test-plugin"


def install_plugin(site: Path, entry_points: dict[str, dict[str, str]]) -> Path:
    """Write an installed distribution's ``METADATA`` and ``entry_points.txt`` into
    ``site``: ``entry_points`` maps a group to its names and ``"module:attribute"``
    targets. Returns ``site``, the folder to put on a process's path."""
    info = site / f"{PLUGIN_DISTRIBUTION.replace('-', '_')}-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {PLUGIN_DISTRIBUTION}\nVersion: 0.0\n"
    )
    sections = [
        "\n".join([f"[{group}]", *(f"{name} = {target}" for name, target in entries.items())])
        for group, entries in entry_points.items()
    ]
    (info / "entry_points.txt").write_text("\n\n".join(sections) + "\n")
    return site


def run_with_plugin(site: Path, check: str, *args: str) -> None:
    """Call ``check`` (``"module:function"``, given ``args``) in a fresh Python process
    with ``site`` on its path before this process's own; fail with its output."""
    module, _, function = check.partition(":")
    code = (
        "import importlib, sys\n"
        f"getattr(importlib.import_module({module!r}), {function!r})(*sys.argv[1:])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
