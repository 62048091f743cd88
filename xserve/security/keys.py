"""API keys with roles, kept only as digests.

The keys file (``XSERVE_API_KEYS``) holds one key a line::

    <caller-name> <role>[,<role>...] sha256:<hex digest of the key>

Blank lines and ``#`` comments are ignored. A presented key is hashed and
compared with every stored digest in constant time (``hmac.compare_digest``,
no early exit), so the time taken tells nothing about which digest came close.
The file is re-read when it changes, so ``xserve keys add`` takes effect
without a restart; a file that no longer parses denies every key until fixed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ROLES",
    "KeyFileError",
    "KeyRing",
    "Principal",
    "add_key",
    "key_digest",
    "parse_keys",
]

log = logging.getLogger(__name__)

ROLES = ("predict", "explain", "audit", "outcomes", "admin")
"""``admin`` implies every other role."""

RECHECK_SECONDS = 1.0
"""Least time between two checks of the keys file for changes."""


class KeyFileError(ValueError):
    """The keys file cannot be read or a line is malformed."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the name recorded in the audit log, and its roles."""

    name: str
    roles: frozenset[str]

    def allows(self, role: str | None) -> bool:
        """Whether this caller may do what needs ``role`` (None: any valid key)."""
        return role is None or "admin" in self.roles or role in self.roles


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    digest: bytes


def key_digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _roles(text: str, where: str) -> frozenset[str]:
    roles = frozenset(r.strip() for r in text.split(",") if r.strip())
    unknown = sorted(roles - set(ROLES))
    if not roles or unknown:
        raise KeyFileError(f"{where}: unknown roles {unknown or [text]}; roles are {list(ROLES)}")
    return roles


def parse_keys(text: str, where: str = "keys") -> list[tuple[Principal, str]]:
    """(caller, digest) for every key line of ``text``."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        here = f"{where}:{number}"
        parts = line.split()
        if len(parts) != 3:
            raise KeyFileError(f"{here}: expected '<name> <role>[,<role>...] sha256:<hex>'")
        name, roles, digest = parts
        hexdigest = digest.lower().removeprefix("sha256:")
        if (
            not digest.lower().startswith("sha256:")
            or len(hexdigest) != 64
            or any(c not in "0123456789abcdef" for c in hexdigest)
        ):
            raise KeyFileError(f"{here}: the digest must be 'sha256:' and 64 hex digits")
        out.append((Principal(name, _roles(roles, here)), "sha256:" + hexdigest))
    return out


class KeyRing:
    """The keys of one keys file, reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: list[_Entry] = []
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._load(strict=True)

    def __len__(self) -> int:
        return len(self._entries)

    def _load(self, strict: bool) -> None:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            parsed = parse_keys(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, KeyFileError) as exc:
            if strict:
                raise KeyFileError(str(exc)) from exc
            log.error("API keys: %s; every key is refused until the file is fixed", exc)
            self._entries, self._stamp = [], None
            return
        self._entries = [_Entry(p, d.encode()) for p, d in parsed]
        self._stamp = stamp

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked >= RECHECK_SECONDS:
            with self._lock:
                if now - self._checked >= RECHECK_SECONDS:
                    self._checked = now
                    self._load(strict=False)

    def authenticate(self, key: str | None) -> Principal | None:
        """The caller ``key`` belongs to, or None."""
        self._refresh()
        if not key:
            return None
        presented = key_digest(key).encode()
        found = None
        for entry in self._entries:  # all of them: no early exit
            if hmac.compare_digest(entry.digest, presented):
                found = entry.principal
        return found


def add_key(path: Path, name: str, roles: str) -> str:
    """Create a key for ``name``, append its digest line to ``path``, return the key."""
    if not name or any(c.isspace() for c in name) or name.startswith("#"):
        raise KeyFileError(f"name {name!r}: must be non-empty, without spaces or a leading '#'")
    role_set = _roles(roles, "--roles")
    key = "xs_" + secrets.token_urlsafe(32)
    line = f"{name} {','.join(sorted(role_set))} {key_digest(key)}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    with path.open("a", encoding="utf-8") as fh:
        if existing and not existing.endswith("\n"):
            fh.write("\n")
        fh.write(line)
    path.chmod(0o600)  # digests only, but no reason to show who holds which roles
    return key
