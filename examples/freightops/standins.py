"""Local stand-ins the example still uses (and the legacy helpers of the naive profile).

Each class here is the *simplest* thing that behaves like the component for
the example, and each says which component replaces it. They use the shared
:class:`~freightscale.stores.Store` so they already work across several
workers (Redis) and fall back to memory in the embedded default.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from starlette.datastructures import Headers
from starlette.requests import cookie_parser

from examples.freightops.security import permissions_for
from freightscale.context import Principal, bind_principal, get_principal
from freightscale.exceptions import FreightScaleError
from freightscale.stores import Store
from freightscale.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from examples.freightops.runtime import Services

__all__ = [
    "SESSION_COOKIE",
    "CookieLoginMiddleware",
    "SessionBackend",
    "StoreSessions",
    "Unauthenticated",
    "make_principal",
]

SESSION_COOKIE = "fo_session"

_json_encode = orjson.dumps


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


class StoreSessions:
    """Login sessions as JSON in the shared store.

    TODO(sessions component): replace with ``freightscale.sessions``
    (lazy loading, signed cookie, rotation) once it lands on main.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(self, data: Mapping[str, Any], *, ttl: int) -> str:
        session_id = secrets.token_urlsafe(24)
        await self.store.set(session_id, _json_encode(dict(data)), expires_in=ttl)
        return session_id

    async def get(self, session_id: str) -> dict[str, Any] | None:
        if not _valid_session_id(session_id):
            return None
        raw = await self.store.get(session_id)
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    async def delete(self, session_id: str) -> None:
        if _valid_session_id(session_id):
            await self.store.delete(session_id)


def _valid_session_id(session_id: str) -> bool:
    return 16 <= len(session_id) <= 64 and all(c.isalnum() or c in "-_" for c in session_id)


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

    ``freightscale.auth`` (a ``build_stack`` layer) verifies bearer tokens and
    binds their principal before the rate limits and the response cache run.
    A browser that logged in carries only the ``fo_session`` cookie; this
    layer, wrapped around the routes (so inside the stack), binds the
    session's user for such requests. Its permissions come from the same
    RBAC cache as a token's, and logout-everywhere reaches it through the
    same revocation list. A stale, unknown or revoked cookie is ignored
    (anonymous; routes that need a user answer 401), never an error.

    Requests authenticated this way are not answered from the response cache
    (the cache runs before this layer and sees no principal: it bypasses).

    TODO(sessions component): the session *data* moves to
    ``freightscale.sessions``; a cookie must still be turned into a principal
    here, because the sessions layer runs inside auth.
    """

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or get_principal(scope) is not None:
            await self.app(scope, receive, send)
            return
        _token, session_id = credentials(scope)
        principal = await self.authenticate(session_id) if session_id else None
        if principal is None:
            await self.app(scope, receive, send)
            return
        with bind_principal(principal, scope):
            await self.app(scope, receive, send)

    async def authenticate(self, session_id: str) -> Principal | None:
        """The principal of a live, unrevoked login session (None otherwise)."""
        data = await self.services.sessions.get(session_id)
        if data is None or float(data.get("exp", 0)) < time.time():
            return None
        user, tenant, role = str(data["user_id"]), str(data["tenant_id"]), str(data["role"])
        auth = self.services.auth
        permissions: frozenset[str] | None = None
        if auth is not None:
            try:
                if await auth.revocations.is_revoked(None, user, tenant, float(data["created"])):
                    return None
                if auth.permissions is not None:
                    permissions = await auth.permissions.get(tenant, frozenset({role}))
            except FreightScaleError:
                return None  # revocation store down and failing closed: no cookie login
        claims = dict(data, sid=session_id)
        return make_principal(user, tenant, role, claims, permissions=permissions)
