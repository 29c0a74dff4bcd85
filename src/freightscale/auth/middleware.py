"""``AuthMiddleware``: bearer token → principal, tenant checks, Starlette scope keys.

Per request (a pure ASGI middleware):

1. lifespan (and anything but http / websocket) passes straight through, and so
   do ``exempt_paths`` (health checks): no token is even looked at;
2. no ``Authorization: Bearer`` header → the request goes on anonymously
   (``request.user`` is Starlette's ``UnauthenticatedUser``), unless
   ``require_auth`` is on and the path is not under ``public_paths`` → 401;
3. a token is present → it must be valid, whatever the path: a bad one gets
   401 problem+json with ``WWW-Authenticate: Bearer error="invalid_token"``;
4. the tenant hints of the request (path, allowed header, host) must match the
   token's tenant, else 403;
5. the principal is bound: ``scope["user"]``, ``scope["auth"]`` (Starlette's
   ``AuthCredentials`` of the token's scopes plus the granted permissions, so
   ``requires()`` works; ``get_principal(scope)`` reads it there) and the
   contextvar the database layer, caches, rate limits and logs read.

With the caches warm, steps 3 to 5 do no I/O at all.
"""

from __future__ import annotations

import re

from starlette.authentication import AuthCredentials, UnauthenticatedUser

from freightscale.auth.cache import TOKEN_FORMAT
from freightscale.auth.events import EventBus
from freightscale.auth.keys import JWKSKeySource
from freightscale.auth.rbac import PermissionLoader
from freightscale.auth.service import Authenticator
from freightscale.auth.tenant import TenantGuard
from freightscale.auth.verify import InvalidToken
from freightscale.backends.redis import RedisClient
from freightscale.context import _principal, reset_principal, set_principal
from freightscale.errors import problem_response
from freightscale.exceptions import ConfigurationError, StoreUnavailableError
from freightscale.settings.auth import AuthSettings
from freightscale.stores.base import Store
from freightscale.telemetry import get_counter
from freightscale.types import ASGIApp, Receive, Scope, Send

__all__ = ["AuthMiddleware"]

_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


class AuthMiddleware:
    """Authenticate bearer tokens and set the principal and tenant context.

    Args:
        app: the ASGI app to wrap.
        settings: the auth settings (taken from ``authenticator`` when omitted).
        authenticator: a shared :class:`~freightscale.auth.Authenticator`; built
            from the other arguments when omitted.
        redis: Redis client for revocations, permission versions and events.
        store: shared store to use instead of one on ``redis``.
        bus: event bus to use instead of one on ``redis``.
        permission_loader: resolves roles to permissions (enables RBAC).
        jwks: a JWKS key source to use instead of one built from ``jwks_url``.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: AuthSettings | None = None,
        *,
        authenticator: Authenticator | None = None,
        redis: RedisClient | None = None,
        store: Store | None = None,
        bus: EventBus | None = None,
        permission_loader: PermissionLoader | None = None,
        jwks: JWKSKeySource | None = None,
    ) -> None:
        if authenticator is None:
            if settings is None:
                raise ConfigurationError("AuthMiddleware needs AuthSettings or an Authenticator")
            authenticator = Authenticator(
                settings,
                redis=redis,
                store=store,
                bus=bus,
                permission_loader=permission_loader,
                jwks=jwks,
            )
        self.app = app
        self.authenticator = authenticator
        self.settings = settings = authenticator.settings
        self.require_auth = settings.require_auth
        self.exempt = tuple(settings.exempt_paths)
        self.public = tuple(settings.public_paths)
        self.tenant_guard = guard = TenantGuard(settings)
        self._guard_active = guard.active
        self._guard_headers = guard.checks_headers
        self._guard_prefix = guard.path_prefix
        self._cached = authenticator.cached
        # The principal contextvar's own set/reset (C methods): what set_principal() and
        # reset_principal() call, without their Python frames on every request.
        self._bind = _principal.set
        self._unbind = _principal.reset
        self._failures = get_counter("freightscale.auth.failures")

    def __repr__(self) -> str:
        return f"AuthMiddleware({self.authenticator!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        # str.startswith(tuple) first: one C call rules out the common case.
        if self.exempt and path.startswith(self.exempt) and _under(path, self.exempt):
            await self.app(scope, receive, send)
            return
        raw: bytes | None = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                prefix = value[:7]
                if prefix == b"Bearer " or prefix.lower() == b"bearer ":
                    raw = value[7:]
                break
        if raw is None:
            if self.require_auth and not (
                self.public and path.startswith(self.public) and _under(path, self.public)
            ):
                await self._reject(scope, receive, send, None)
                return
            scope["user"] = UnauthenticatedUser()
            scope["auth"] = AuthCredentials()
            reset = set_principal(None, scope)
            try:
                await self.app(scope, receive, send)
            finally:
                reset_principal(reset)
            return
        # The warm path: the header's bytes are the cache key as they are. Only
        # tokens in TOKEN_FORMAT are ever cached, so a hit needs neither the
        # surrounding-space strip nor the format check below.
        resolved = self._cached(raw)
        if resolved is None:
            if raw[:1] == b" " or raw[-1:] == b" ":
                raw = raw.strip()
            if TOKEN_FORMAT.fullmatch(raw) is None:
                await self._reject(scope, receive, send, "the bearer token is malformed")
                return
            try:
                resolved = await self.authenticator.authenticate(raw.decode("ascii"), key=raw)
            except InvalidToken as exc:
                await self._reject(scope, receive, send, exc.description)
                return
            except StoreUnavailableError:
                detail = "authentication is unavailable"
                await self._respond(scope, receive, send, 503, detail, None)
                return
        principal, credentials = resolved
        if self._guard_active and (self._guard_headers or path.startswith(self._guard_prefix)):
            violation = self.tenant_guard.violation(scope, principal)
            if violation is not None:
                await self._respond(scope, receive, send, 403, violation, None)
                return
        # What set_principal(principal, scope) records in the scope, without its call.
        scope["auth"] = credentials
        scope["user"] = principal
        reset = self._bind(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            self._unbind(reset)

    async def _reject(
        self, scope: Scope, receive: Receive, send: Send, description: str | None
    ) -> None:
        self._failures.add(1, _reason(description))
        if description is None:
            challenge = 'Bearer realm="api"'
            detail = "authentication required"
        else:
            safe = _UNSAFE.sub("'", description)
            challenge = f'Bearer realm="api", error="invalid_token", error_description="{safe}"'
            detail = description
        await self._respond(scope, receive, send, 401, detail, challenge)

    async def _respond(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        detail: str,
        challenge: str | None,
    ) -> None:
        if scope["type"] == "websocket":
            # Closing before accept makes the server answer the handshake with 403.
            await receive()
            await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
            return
        headers = {"WWW-Authenticate": challenge} if challenge else {}
        if status == 503:
            headers["Retry-After"] = "1"
        response = problem_response(
            status, detail=detail, instance=scope.get("path"), headers=headers
        )
        await response(scope, receive, send)

    async def aclose(self) -> None:
        """Stop the authenticator's background tasks (call on application shutdown)."""
        await self.authenticator.aclose()


def _reason(description: str | None) -> dict[str, str]:
    if description is None:
        return {"reason": "missing"}
    if "revoked" in description:
        return {"reason": "revoked"}
    if "expired" in description:
        return {"reason": "expired"}
    return {"reason": "invalid"}


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    for prefix in prefixes:
        if path == prefix or (
            path.startswith(prefix) and (prefix.endswith("/") or path[len(prefix)] == "/")
        ):
            return True
    return False
