"""Who calls over gRPC: the API key in the ``authorization`` metadata (``Bearer <key>``),
checked against the server's keys and the role a method needs, as over HTTP."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from xserve.api.auth import NO_KEY
from xserve.errors import Forbidden, Unauthenticated
from xserve.security.keys import KeyRing, Principal

__all__ = ["ANY_ROLE", "KeyCheck"]

ANY_ROLE = None
"""A method any valid key may call (metadata and readiness of models)."""


def _bearer(metadata: Iterable[Any]) -> str | None:
    for key, value in metadata:
        if key == "authorization":  # gRPC metadata keys are lower-case
            scheme, _, token = str(value).partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None


class KeyCheck:
    """The callers of a server with API keys; without them (``keys`` None) every call is
    anonymous and allowed."""

    def __init__(self, keys: KeyRing | None) -> None:
        self.keys = keys

    def caller(self, metadata: Iterable[Any], role: str | None) -> Principal | None:
        """The caller, who holds ``role`` (None: any role); raises Unauthenticated or
        Forbidden otherwise."""
        if self.keys is None:
            return None
        token = _bearer(metadata)
        if token is None:
            raise Unauthenticated(NO_KEY)
        principal = self.keys.authenticate(token)
        if principal is None:
            raise Unauthenticated("the API key is not valid")
        if not principal.allows(role):
            raise Forbidden(f"caller {principal.name!r} does not have the {role!r} role")
        return principal
