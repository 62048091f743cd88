"""Which role each route needs, and the guard that checks the caller's API key.

The rules live in one table, by method and path, so that routes added later
are covered: anything not listed needs a valid key of any role. Health,
metrics and the API docs need none.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from xserve.errors import Forbidden, Unauthenticated
from xserve.security.keys import ROLES, KeyRing, Principal
from xserve.settings import Settings

__all__ = [
    "PUBLIC",
    "PUBLIC_OPT",
    "caller_of",
    "guards_from_settings",
    "key_guard",
    "required_role",
    "requires",
]

log = logging.getLogger("xserve")

PUBLIC = "public"
"""The route ``opt`` key that marks a route as needing no API key."""

PUBLIC_OPT: Mapping[str, Any] = MappingProxyType({PUBLIC: True})
"""``opt=PUBLIC_OPT`` (or ``opt={"public": True}``) on a route: no API key needed."""

_MODEL = r"/models/[^/]+(?:/versions/[^/]+)?"
_RULES: tuple[tuple[str | None, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), role)
    for method, pattern, role in (
        (None, r"^/health(?:/|$)", PUBLIC),
        (None, r"^/v2/health(?:/|$)", PUBLIC),
        (None, r"^/metrics/?$", PUBLIC),
        (None, r"^/docs(?:/|$)", PUBLIC),
        ("POST", rf"^/v1{_MODEL}/predict/?$", "predict"),
        ("POST", rf"^/v2{_MODEL}/infer/?$", "predict"),
        ("POST", rf"^/v1{_MODEL}/explain/?$", "explain"),
        (None, r"^/v1/jobs(?:/|$)", "explain"),
        (None, r"^/v1/audit(?:/|$)", "audit"),
    )
)


def required_role(method: str, path: str) -> str | None:
    """``PUBLIC``, a role name, or None for any valid key."""
    for rule_method, pattern, role in _RULES:
        if (rule_method is None or rule_method == method) and pattern.match(path):
            return role
    return None


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def key_guard(keys: KeyRing) -> Guard:
    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        method = str(connection.scope.get("method", "GET"))
        role = required_role(method, connection.scope["path"])
        if role == PUBLIC:
            return
        token = _bearer(connection.headers.get("authorization"))
        if token is None:
            raise Unauthenticated("an API key is required: 'Authorization: Bearer <key>'")
        principal = keys.authenticate(token)
        if principal is None:
            raise Unauthenticated("the API key is not valid")
        if not principal.allows(role):
            raise Forbidden(f"caller {principal.name!r} does not have the {role!r} role")
        connection.scope["user"] = principal

    return guard


def requires(role: str) -> Guard:
    """The guard for a route that needs ``role`` (``admin`` holds every role):
    ``@post(..., guards=[requires("predict")])``. A server without keys is open."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {list(ROLES)}")

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = connection.scope.get("user")
        if isinstance(principal, Principal) and not principal.allows(role):
            raise Forbidden(f"caller {principal.name!r} does not have the {role!r} role")

    guard.__name__ = guard.__qualname__ = f"requires_{role}"
    return guard


def caller_of(request: Request[Any, Any, Any]) -> str | None:
    """The authenticated caller's name (None when the server runs without keys)."""
    user = request.scope.get("user")
    return user.name if isinstance(user, Principal) else None


def guards_from_settings(settings: Settings) -> list[Guard]:
    """The key guard for ``XSERVE_API_KEYS``, or none (with a loud warning): an open server."""
    if settings.api_keys is None:
        log.warning(
            "NO API KEYS CONFIGURED (XSERVE_API_KEYS unset): every endpoint, the audit log "
            "included, is open to anyone who can reach this server, and decisions are "
            "recorded without a caller. Set XSERVE_API_KEYS (see `xserve keys add`)."
        )
        return []
    keys = KeyRing(settings.api_keys)  # a missing or malformed file stops the server here
    if not len(keys):
        log.warning(
            "API keys file %s holds no keys: every request needing one gets 401", settings.api_keys
        )
    return [key_guard(keys)]
