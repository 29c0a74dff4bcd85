"""The one local stand-in the example still uses, and the naive profile's helpers.

:class:`CookieLoginMiddleware` turns the web login's session cookie into a
principal (freightscale.auth authenticates bearer tokens only; see its
docstring). The rest — :class:`SessionBackend`, :func:`credentials`,
:func:`make_principal`, :class:`Unauthenticated` — serves the naive profile's
legacy authentication, and :func:`get_many` its benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from starlette.datastructures import Headers
from starlette.requests import cookie_parser

from examples.freightops.security import permissions_for
from freightscale.context import Principal, bind_principal, get_principal
from freightscale.exceptions import FreightScaleError
from freightscale.sessions import Session
from freightscale.stores import Store
from freightscale.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from examples.freightops.runtime import Services

__all__ = [
    "SESSION_COOKIE",
    "CookieLoginMiddleware",
    "SessionBackend",
    "Unauthenticated",
    "make_principal",
]

SESSION_COOKIE = "fo_session"


class Unauthenticated(Exception):
    """The request's credentials are invalid (answered with a 401)."""


class SessionBackend(Protocol):
    """Where login sessions live (server side; the cookie holds only the id)."""

    async def create(self, data: Mapping[str, Any], *, ttl: int) -> str:
        """Store a new session and return its id."""
        ...

    async def get(self, session_id: str) -> dict[str, Any] | None:
        """Return the session's data, or None if absent or expired."""
        ...

    async def delete(self, session_id: str) -> None:
        """Forget the session."""
        ...


async def get_many(store: Store, keys: Sequence[str]) -> list[bytes | None]:
    """Read several keys in one round trip on a single-node Redis (``MGET``).

    Other stores (memory, PostgreSQL, Redis Cluster, whose keys may live on
    different nodes) fall back to one ``get`` per key.
    """
    from redis.asyncio import Redis

    client = getattr(store, "client", None)
    full_key = getattr(store, "full_key", None)
    if isinstance(client, Redis) and full_key is not None:
        from freightscale.backends.redis import translate_redis_error

        try:
            values: list[Any] = await client.mget([full_key(k) for k in keys])
        except Exception as exc:
            raise translate_redis_error(exc) from exc
        return values
    return [await store.get(k) for k in keys]


def make_principal(
    user_id: str, tenant_id: str, role: str, claims: Mapping[str, Any], *, permissions: Any = None
) -> Principal:
    """Build the request's principal; permissions default to the role's."""
    granted = frozenset(permissions) if permissions is not None else permissions_for(role)
    return Principal(
        user_id=user_id,
        tenant_id=tenant_id,
        roles=frozenset({role}),
        scopes=granted,
        claims=dict(claims),
        permissions=granted,
    )


def credentials(scope: Scope) -> tuple[str | None, str | None]:
    """The request's bearer token and session cookie (either may be None)."""
    headers = Headers(scope=scope)
    token = None
    authorization = headers.get("authorization")
    if authorization:
        kind, _, value = authorization.partition(" ")
        if kind.lower() == "bearer" and value.strip():
            token = value.strip()
    cookie = headers.get("cookie")
    session_id = cookie_parser(cookie).get(SESSION_COOKIE) if cookie else None
    return token, session_id


class CookieLoginMiddleware:
    """Authenticate the web login's session cookie when no bearer token did.

    ``freightscale.auth`` (a ``build_stack`` layer) authenticates bearer
    tokens only. A browser that logged in carries only the session cookie of
    ``freightscale.sessions``, whose layer ``build_stack`` places inside auth,
    the rate limits and the response cache. This layer, wrapped around the
    routes (so inside the sessions layer), loads the session of a cookie-only
    request and binds its user as the principal, with permissions from the
    same RBAC cache as a token's and the same revocation check
    (logout-everywhere). A stale, unknown or revoked cookie is ignored
    (anonymous; routes that need a user answer 401), never an error.

    Such requests are not answered from the response cache (the cache sees no
    principal and bypasses) and are rate-limited per client IP.

    TODO(auth component): an auth hook that accepts a session as credentials
    would let the cookie login run before the limits and the cache.
    """

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or get_principal(scope) is not None:
            await self.app(scope, receive, send)
            return
        _token, cookie = credentials(scope)
        session = scope.get("session")
        principal = None
        if cookie and isinstance(session, Session):
            principal = await self.authenticate(await session.load())
        if principal is None:
            await self.app(scope, receive, send)
            return
        with bind_principal(principal, scope):
            await self.app(scope, receive, send)

    async def authenticate(self, session: Session) -> Principal | None:
        """The principal of a live, unrevoked login session (None otherwise)."""
        try:
            user = str(session["user_id"])
            tenant = str(session["tenant_id"])
            role = str(session["role"])
            created = float(session["created"])
            expires = float(session["exp"])
        except (KeyError, TypeError, ValueError):
            return None  # no login in this session (or not ours)
        if expires < time.time():
            return None
        auth = self.services.auth
        permissions: frozenset[str] | None = None
        if auth is not None:
            try:
                if await auth.revocations.is_revoked(None, user, tenant, created):
                    return None
                if auth.permissions is not None:
                    permissions = await auth.permissions.get(tenant, frozenset({role}))
            except FreightScaleError:
                return None  # revocation store down and failing closed: no cookie login
        claims = {"user_id": user, "tenant_id": tenant, "role": role, "iat": created}
        return make_principal(user, tenant, role, claims, permissions=permissions)
