"""The model repository: discovers version folders and keeps them loaded.

``scan()`` brings memory in line with disk: new version folders are loaded,
removed ones dropped, broken ones recorded with their error. A folder is
loaded only once its files look the same on two scans in a row, so a copy in
progress is not mistaken for a broken version. Readers never wait on a scan:
every lookup reads dictionaries that the scan replaces whole.

The versions a scan loads load side by side, each in its own daemon thread; one
still loading ``load_timeout`` seconds later is marked failed and left behind, so
no version (a hostile file, a hung mount) holds up the scan, startup or shutdown
for the others.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from xserve.errors import ModelNotFound, ModelNotReady, XServeError
from xserve.repository.layout import version_folders
from xserve.repository.traffic import PolicyState, Route, next_state
from xserve.repository.version import ModelVersion, load_version

__all__ = ["LoadHook", "ModelRepository", "VersionEntry"]

log = logging.getLogger(__name__)
Signature = tuple[tuple[str, int, int], ...]
State = Literal["pending", "ready", "failed"]
LoadHook = Callable[[ModelVersion], ModelVersion]
"""Run on each version loaded, in order; each returns the version to keep (a copy made
with ``dataclasses.replace``: versions are frozen), e.g. ``attach_inline``."""


@dataclass(frozen=True)
class VersionEntry:
    version: str
    path: Path
    state: State
    signature: Signature
    model: ModelVersion | None = None
    error: str | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "state": self.state}
        if self.model is not None:
            out["flavor"] = self.model.flavor
            out["artifact_sha256"] = self.model.digest
        if self.error is not None:
            out["error"] = self.error
        return out


def _signature(folder: Path) -> Signature:
    """Names, sizes and times of the folder's regular files: ``stat`` only, nothing is
    opened (a FIFO would block the scan), so no file can stall it."""
    entries = []
    for p in sorted(folder.rglob("*")):
        try:
            st = p.stat()
        except OSError:  # removed while we looked, or a symlink loop
            continue
        if p.is_file():
            entries.append((p.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns))
    return tuple(entries)


class ModelRepository:
    def __init__(
        self,
        root: Path,
        threads: int = 1,
        on_load: list[LoadHook] | None = None,
        load_timeout: float = 120.0,
    ) -> None:
        self.root = root
        self.threads = threads
        self.on_load = on_load or []
        self.load_timeout = load_timeout
        self._entries: dict[str, dict[str, VersionEntry]] = {}
        self._serving: dict[str, ModelVersion] = {}
        # Traffic policies (deployment.yaml), resolved by each scan; requests only read them.
        self._policies: dict[str, PolicyState] = {}
        self._routes: dict[str, Route] = {}
        self._scan_lock = threading.Lock()
        self.scanned = False

    # -- discovery ---------------------------------------------------------
    def _on_disk(self, only: str | None) -> dict[str, dict[str, Path]]:
        found: dict[str, dict[str, Path]] = {}
        if not self.root.is_dir():
            return found
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or model_dir.name.startswith((".", "_")):
                continue
            if only is not None and model_dir.name != only:
                continue
            versions = version_folders(model_dir)
            if versions:
                found[model_dir.name] = versions
        return found

    def _load(self, name: str, version: str, path: Path, sig: Signature) -> VersionEntry:
        try:
            model = load_version(name, version, path, self.threads)
            for hook in self.on_load:
                model = hook(model)
        except XServeError as exc:
            log.warning("model %s version %s failed to load: %s", name, version, exc.message)
            return VersionEntry(version, path, "failed", sig, error=exc.message)
        except Exception as exc:  # a bug in a runtime must not stop the scan
            log.exception("model %s version %s failed to load", name, version)
            return VersionEntry(version, path, "failed", sig, error=f"{type(exc).__name__}: {exc}")
        log.info("model %s version %s ready (%s)", name, version, model.flavor)
        return VersionEntry(version, path, "ready", sig, model=model)

    def _load_all(self, loads: list[VersionEntry], name: str) -> dict[str, VersionEntry]:
        """The pending entries ``loads`` of model ``name``, loaded side by side; those
        not done within ``load_timeout`` come back failed."""
        done: dict[str, VersionEntry] = {}

        def load(entry: VersionEntry) -> None:
            done[entry.version] = self._load(name, entry.version, entry.path, entry.signature)

        threads = [
            threading.Thread(target=load, args=(e,), name=f"load {name} v{e.version}", daemon=True)
            for e in loads
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + self.load_timeout
        out = {}
        for entry, thread in zip(loads, threads, strict=True):
            thread.join(max(0.0, deadline - time.monotonic()))
            result = done.get(entry.version)
            if result is None:
                why = f"loading took longer than {self.load_timeout:g} s (XSERVE_LOAD_TIMEOUT)"
                log.error("model %s version %s failed to load: %s", name, entry.version, why)
                result = dataclasses.replace(entry, state="failed", error=why)
            out[entry.version] = result
        return out

    def _next_entries(
        self, name: str, versions: dict[str, Path], first: bool
    ) -> dict[str, VersionEntry]:
        old_entries = self._entries.get(name, {})
        entries: dict[str, VersionEntry] = {}
        loads: list[VersionEntry] = []
        for version, path in versions.items():  # in version order
            old = old_entries.get(version)
            if old is not None and old.state == "ready":
                entries[version] = old  # a served version folder is immutable
                continue
            sig = _signature(path)
            if old is not None and old.signature == sig and old.state == "failed":
                entries[version] = old
                continue
            entries[version] = VersionEntry(version, path, "pending", sig)
            # Load at once on the first scan; later, only once the files stopped changing.
            if first or (old is not None and old.state == "pending" and old.signature == sig):
                loads.append(entries[version])
        if loads:
            entries.update(self._load_all(loads, name))
        return entries

    def scan(self, only: str | None = None) -> None:
        """Bring the loaded versions in line with the folders on disk (of one model, if given)."""
        with self._scan_lock:
            first = not self.scanned
            # Scanning one model leaves the others as they are.
            entries = {n: e for n, e in self._entries.items() if only is not None and n != only}
            for name, versions in self._on_disk(only).items():
                entries[name] = self._next_entries(name, versions, first)
            policies, routes, serving = {}, {}, {}
            for name, loaded in entries.items():
                ready = {v: e.model for v, e in loaded.items() if e.model is not None}
                before = self._policies.get(name, PolicyState())
                policies[name] = state = next_state(name, self.root / name, ready, before)
                if state.route is not None:
                    routes[name] = state.route
                    serving[name] = state.route.primary
            self._entries = entries
            self._policies = policies
            self._routes = routes
            self._serving = serving
            self.scanned = True

    # -- lookup ------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The serving version of ``name``, or the given one."""
        if version is None:
            model = self._serving.get(name)
            if model is not None:
                return model
            if name not in self._entries:
                raise ModelNotFound(f"model {name!r} not found")
            raise ModelNotReady(f"model {name!r} has no version ready to serve")
        entry = self._entries.get(name, {}).get(version)
        if entry is None:
            raise ModelNotFound(f"model {name!r} has no version {version!r}")
        if entry.model is None:
            detail = f": {entry.error}" if entry.error else " yet"
            raise ModelNotReady(f"model {name!r} version {version!r} is not loaded{detail}")
        return entry.model

    def route(self, name: str, subject: str | None = None) -> ModelVersion:
        """The version that answers an unversioned request (of ``subject``, for a sticky
        split) under the model's traffic policy."""
        route = self._routes.get(name)
        if route is None:
            return self.get(name)  # raises ModelNotFound or ModelNotReady
        return route.choose(subject)

    def shadow(self, name: str) -> ModelVersion | None:
        """The ready version that gets a copy of ``name``'s live traffic, if any."""
        route = self._routes.get(name)
        return route.shadow if route is not None else None

    def traffic(self, name: str) -> dict[str, Any]:
        """The model's traffic policy as ``/v1/models`` shows it."""
        return self._policies.get(name, PolicyState()).describe()

    def names(self) -> list[str]:
        return sorted(self._entries)

    def versions(self, name: str) -> list[VersionEntry]:
        if name not in self._entries:
            raise ModelNotFound(f"model {name!r} not found")
        return list(self._entries[name].values())

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for name, versions in sorted(self._entries.items()):
            serving = self._serving.get(name)
            out.append(
                {
                    "name": name,
                    "serving_version": serving.version if serving else None,
                    "traffic": self.traffic(name),
                    "versions": [e.describe() for e in versions.values()],
                }
            )
        return out
