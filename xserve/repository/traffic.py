"""Traffic policies: which version answers a model's unversioned requests (``deployment.yaml``).

A model folder may hold a ``deployment.yaml``::

    policy: split             # latest | pinned | split
    pinned: "2"               # the one version, for pinned
    split: {"2": 90, "3": 10} # weights, for split (A/B, canary)
    shadow: "3"               # optional: gets a copy of live traffic, never answers

The repository scan reads it (again whenever its size or mtime changes) and
resolves it against the versions that are ready into a :class:`Route`, which
the request path only reads: choosing a version is a dict lookup plus, for a
split, one hash.

A split is sticky per subject: ``(model, subject)`` hashes to a point in
[0, 1) that is compared with the cumulative weights in version order, so the
same subject always meets the same version while the weights stay the same,
and moving weight from one version to the next moves only that share of the
subjects. Requests without a subject draw a random point.

A policy takes effect only when every version it sends live traffic to is
ready. Until then (a version still loading, failed, or absent), and when the
file does not parse, the policy in force before keeps serving (at start:
``latest``) and the problem is reported in ``/v1/models``; this mirrors the
repository's rule that a broken newer version leaves the previous one serving.
A shadow version that is not ready does not hold the live policy back; the
copies wait until it is.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import random
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xserve.errors import ManifestError
from xserve.repository.layout import is_version_name, read_regular_file, version_key
from xserve.repository.manifest import parse_yaml
from xserve.repository.version import ModelVersion

__all__ = [
    "DEPLOYMENT_NAME",
    "Deployment",
    "Gate",
    "PolicyState",
    "Route",
    "load_deployment",
    "next_state",
    "resolve",
    "save_deployment",
    "subject_point",
]

DEPLOYMENT_NAME = "deployment.yaml"
Policy = Literal["latest", "pinned", "split"]


def _version_name(value: Any) -> str:
    # YAML reads `pinned: 2` as an int: accept it, since version folders are numbers.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a version number, got {value!r}")
    text = str(value)
    if not is_version_name(text):
        raise ValueError(f"{text!r} is not a version number (version folders are numeric)")
    return text


class Gate(BaseModel):
    """A promotion gate: ``xserve promote`` scores the candidate and the serving version on
    ``holdout`` (a file in the model's folder) and promotes only if every rule holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    holdout: str = Field(min_length=1)
    """CSV or Parquet file, relative to the model's folder (and inside it)."""
    label: str = Field(min_length=1)
    rules: list[str] = Field(default_factory=list)
    """Bounds on new - serving, e.g. ``auc>=-0.005``."""

    def holdout_path(self, model_dir: Path) -> Path:
        """The holdout file, refused (ManifestError) unless it is a regular file inside
        ``model_dir`` after resolving symlinks."""
        root = model_dir.resolve()
        path = (model_dir / self.holdout).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise ManifestError(
                f"{model_dir / DEPLOYMENT_NAME}: gate.holdout: {self.holdout} is not a file "
                "inside the model's folder"
            )
        return path


class Deployment(BaseModel):
    """One model's ``deployment.yaml``. Keys of other policies may stay in the file unused,
    so that a rollback is a one-line change of ``policy``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Policy = "latest"
    pinned: str | None = None
    split: dict[str, float] | None = None
    shadow: str | None = None
    gate: Gate | None = None
    """Applied by ``xserve promote`` before it changes the policy."""

    @field_validator("pinned", "shadow", mode="before")
    @classmethod
    def _one_version(cls, value: Any) -> Any:
        return None if value is None else _version_name(value)

    @field_validator("split", mode="before")
    @classmethod
    def _weights(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ValueError('expected a mapping of version to weight, e.g. {"2": 90, "3": 10}')
        out: dict[str, float] = {}
        for version, weight in value.items():
            name = _version_name(version)
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise ValueError(f"{name}: weight {weight!r} is not a number")
            if not 0 <= weight < float("inf"):
                raise ValueError(f"{name}: weight {weight!r} must be finite and not negative")
            out[name] = float(weight)
        if not out or sum(out.values()) <= 0:
            raise ValueError("needs at least one version with a positive weight")
        return out

    @model_validator(mode="after")
    def _policy_has_its_key(self) -> Deployment:
        if self.policy == "pinned" and self.pinned is None:
            raise ValueError("pinned: required with policy: pinned")
        if self.policy == "split" and self.split is None:
            raise ValueError("split: required with policy: split")
        return self

    def live_versions(self) -> list[str]:
        """The versions this policy names for live traffic (none for ``latest``: it takes
        whichever is newest)."""
        if self.policy == "pinned":
            assert self.pinned is not None
            return [self.pinned]
        if self.policy == "split":
            assert self.split is not None
            return [v for v, w in self.split.items() if w > 0]
        return []

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"policy": self.policy}
        if self.policy == "pinned":
            out["pinned"] = self.pinned
        if self.policy == "split":
            out["split"] = self.split
        if self.shadow is not None:
            out["shadow"] = self.shadow
        return out


LATEST = Deployment()
MAX_DEPLOYMENT_BYTES = 1 << 16
"""A deployment.yaml is a few lines; anything larger is refused unread."""


def load_deployment(path: Path, text: bytes | None = None) -> Deployment:
    """Read (or parse ``text`` of) a ``deployment.yaml`` and validate it; errors name the
    file and key (ManifestError). An empty file means ``latest``."""
    try:
        raw_text = read_regular_file(path, MAX_DEPLOYMENT_BYTES) if text is None else text
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from None
    return parse_yaml(path, Deployment, raw_text, empty=LATEST)


def save_deployment(model_dir: Path, deployment: Deployment) -> Path:
    """Write ``deployment.yaml`` atomically (a scan never reads it half-written)."""
    path = model_dir / DEPLOYMENT_NAME
    text = yaml.safe_dump(deployment.model_dump(exclude_none=True), sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".deployment-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- routing -------------------------------------------------------------------------


def subject_point(model: str, subject: str) -> float:
    """Where a subject falls in [0, 1) for ``model``: stable across processes and restarts
    (a keyed-free hash, not Python's salted ``hash``), independent between models."""
    digest = hashlib.blake2b(f"{model}\0{subject}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class Route:
    """A policy resolved against loaded versions: what the request path reads."""

    name: str
    versions: tuple[ModelVersion, ...]
    """Versions that get live traffic, in version order."""
    bounds: tuple[float, ...]
    """Cumulative shares: version i takes points below bounds[i]; the last is 1.0."""
    shadow: ModelVersion | None = None

    @property
    def primary(self) -> ModelVersion:
        """The version with the largest share (the newest of equals): what metadata shows."""
        shares = self.shares()
        return max(self.versions, key=lambda m: (shares[m.version], version_key(m.version)))

    def choose(self, subject: str | None) -> ModelVersion:
        versions = self.versions
        if len(versions) == 1:  # latest and pinned: no hashing at all
            return versions[0]
        point = random.random() if subject is None else subject_point(self.name, subject)
        return versions[min(bisect.bisect_right(self.bounds, point), len(versions) - 1)]

    def shares(self) -> dict[str, float]:
        out, low = {}, 0.0
        for model, high in zip(self.versions, self.bounds, strict=True):
            out[model.version] = high - low
            low = high
        return out


def resolve(
    name: str, deployment: Deployment, ready: Mapping[str, ModelVersion]
) -> tuple[Route | None, str | None]:
    """The route for ``deployment`` over the ``ready`` versions (numeric order), or None
    with the reason it cannot apply."""
    if not ready:
        return None, "no version is ready"
    if deployment.policy == "latest":
        versions, weights = [list(ready.values())[-1]], [1.0]
    else:
        live = deployment.live_versions()
        missing = [v for v in live if v not in ready]
        if missing:
            return None, f"version {missing[0]} is not ready"
        split = deployment.split or {}
        chosen = sorted(live, key=version_key)
        versions = [ready[v] for v in chosen]
        weights = [1.0] if deployment.policy == "pinned" else [split[v] for v in chosen]
    total = sum(weights)
    bounds, running = [], 0.0
    for w in weights:
        running += w
        bounds.append(running / total)
    bounds[-1] = 1.0  # no point may fall past the last version through rounding
    shadow = ready.get(deployment.shadow) if deployment.shadow is not None else None
    return Route(name, tuple(versions), tuple(bounds), shadow), None


# -- per-model state kept across scans ------------------------------------------------


@dataclass(frozen=True)
class PolicyState:
    """What one model's traffic looks like after a scan (shown in ``/v1/models``); replaced
    whole by each scan, so a reader never sees half an update."""

    requested: Deployment = LATEST
    """The last deployment.yaml that parsed (``latest`` without one)."""
    applied: Deployment = LATEST
    """The policy in force: ``requested`` once it could apply."""
    route: Route | None = None
    text: bytes | None = None
    """The file's bytes when last read (None: no file): a change is seen whatever the
    timestamps' granularity."""
    file_error: str | None = None
    """Why the file does not parse (or cannot be read)."""
    error: str | None = None
    """Why ``requested`` is not in force."""

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = self.applied.describe()
        if self.route is not None:
            out["routes"] = {v: round(s, 6) for v, s in self.route.shares().items()}
            shadow = self.applied.shadow
            if shadow is not None and self.route.shadow is None:
                out["shadow_error"] = f"shadow version {shadow} is not ready: no copies sent"
        if self.requested != self.applied:
            out["requested"] = self.requested.describe()
        errors = [e for e in (self.file_error, self.error) if e]
        if errors:
            out["error"] = "; ".join(errors)
        return out


def _read_request(path: Path, old: PolicyState) -> tuple[Deployment, bytes | None, str | None]:
    """(requested policy, file bytes, file error): parsed again only when the bytes change;
    a file that does not parse or read leaves the last good request in force."""
    try:
        # A few hundred bytes, off the request path; a FIFO here must not block the scan.
        text: bytes | None = read_regular_file(path, MAX_DEPLOYMENT_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        text = None
    except OSError as exc:
        return old.requested, old.text, f"{path}: cannot read: {exc}"
    if text == old.text:
        return old.requested, old.text, old.file_error
    if text is None:
        return LATEST, None, None
    try:
        return load_deployment(path, text), text, None
    except ManifestError as exc:
        return old.requested, text, exc.message


def next_state(
    name: str, model_dir: Path, ready: Mapping[str, ModelVersion], old: PolicyState
) -> PolicyState:
    """The model's policy state after a scan that found ``ready`` (in version order)."""
    requested, text, file_error = _read_request(model_dir / DEPLOYMENT_NAME, old)
    route, why = resolve(name, requested, ready)
    if route is not None:
        return PolicyState(requested, requested, route, text, file_error)
    error = f"policy {requested.policy} not applied: {why}" if ready else why
    # The policy in force keeps serving, re-resolved (one of its versions may have gone);
    # failing that, latest.
    applied = old.applied
    route = resolve(name, applied, ready)[0]
    if route is None:
        applied, route = LATEST, resolve(name, LATEST, ready)[0]
    return PolicyState(requested, applied, route, text, file_error, error)
