"""Who the caller is (a middleware) and what it may do (a guard checking the role each
route declares).

With API keys configured (``XSERVE_API_KEYS``), :class:`KeyAuthentication` answers 401
to a request without a valid ``Authorization: Bearer <key>`` before any handler runs,
and puts the caller's :class:`~xserve.security.keys.Principal` in ``scope["user"]``;
:func:`role_guard` then checks the role the route declares with
``opt=requires("predict")``. Routes marked ``opt={"public": True}`` (health, metrics,
the docs) need no key; a route declaring no role needs a valid key of any role.
Without keys the server is open (with a loud warning) and neither runs: a guard costs a
copy of the route handler per request in Litestar.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from xserve.api.errors import error_response
from xserve.errors import Forbidden, Unauthenticated
from xserve.security.keys import ROLES, KeyRing, Principal
from xserve.settings import Settings

__all__ = [
    "PUBLIC",
    "PUBLIC_OPT",
    "ROLE",
    "KeyAuthentication",
    "authentication_from_settings",
    "caller_of",
    "principal_of",
    "requires",
    "role_guard",
]

log = logging.getLogger("xserve")

PUBLIC = "public"
"""The route ``opt`` key that marks a route as needing no API key."""

PUBLIC_OPT: Mapping[str, Any] = MappingProxyType({PUBLIC: True})
"""``opt=PUBLIC_OPT`` (or ``opt={"public": True}``) on a route: no API key needed."""

NO_KEY = "an API key is required: 'Authorization: Bearer <key>'"


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _public_options(scope: Scope) -> bool:
    """An ``OPTIONS`` request to a public route: Litestar's generated OPTIONS handler
    carries no ``opt`` of its own, so look at the route's other handlers."""
    if scope.get("method") != "OPTIONS":
        return False
    app = scope["litestar_app"]
    paths = scope["route_handler"].paths
    return any(
        route.path in paths and handler.opt.get(PUBLIC)
        for route in app.routes
        for handler in getattr(route, "route_handlers", ())
    )


def _authorization(scope: Scope) -> str | None:
    # The raw ASGI headers (names lower-case): cheaper than parsing them all per request.
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.decode("latin-1")
    return None


class KeyAuthentication(ASGIMiddleware):
    """401 for a missing or unknown key; the caller in ``scope["user"]`` otherwise."""

    exclude_opt_key = PUBLIC

    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys
        self.should_bypass_for_scope = _public_options

    def principal(self, header: str | None) -> Principal:
        token = _bearer(header)
        if token is None:
            raise Unauthenticated(NO_KEY)
        principal = self.keys.authenticate(token)
        if principal is None:
            raise Unauthenticated("the API key is not valid")
        return principal

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        try:
            scope["user"] = self.principal(_authorization(scope))
        except Unauthenticated as exc:
            # Answered here, not raised: the metrics middleware around us counts the 401.
            request: Request[Any, Any, Any] = Request(scope, receive)
            await error_response(exc).to_asgi_response(None, request)(scope, receive, send)
            return
        await next_app(scope, receive, send)


ROLE = "role"
"""The route ``opt`` key naming the role a route needs."""


def requires(*roles: str) -> dict[str, tuple[str, ...]]:
    """The route ``opt`` declaring the roles that may call it, any one of them (``admin``
    holds every role): ``@post(..., opt=requires("predict"))``."""
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise ValueError(
            f"unknown role {unknown[0] if unknown else None!r}; roles are {list(ROLES)}"
        )
    return {ROLE: roles}


async def role_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """The app's guard when keys are configured: the caller holds the route's role.
    (async: Litestar runs a sync guard in a worker thread, a trip per request.)"""
    roles = handler.opt.get(ROLE)
    if roles is None:
        return
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal):  # a public route that declares a role
        raise Unauthenticated(NO_KEY)
    if not any(principal.allows(role) for role in roles):
        needed = f"the {roles[0]!r} role" if len(roles) == 1 else f"any of the roles {list(roles)}"
        raise Forbidden(f"caller {principal.name!r} does not have {needed}")


def caller_of(request: Request[Any, Any, Any]) -> str | None:
    """The authenticated caller's name (None when the server runs without keys)."""
    user = request.scope.get("user")
    return user.name if isinstance(user, Principal) else None


def principal_of(request: Request[Any, Any, Any]) -> Principal | None:
    """The authenticated caller, with its roles (None when the server runs without keys)."""
    user = request.scope.get("user")
    return user if isinstance(user, Principal) else None


def authentication_from_settings(settings: Settings) -> list[KeyAuthentication]:
    """The key middleware for ``XSERVE_API_KEYS``, or none (with a loud warning): an open server."""
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
    return [KeyAuthentication(keys)]
