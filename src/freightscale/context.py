"""The request context every component may read.

Authentication writes the principal (and with it the tenant); the request-id
middleware writes the request id. The database layer, caches, rate limits,
logs and spans read them through the functions here, which look at
contextvars so code far from the ASGI scope (a SQLAlchemy event, a log
filter) sees the same values. Scope-level copies live under
``scope["freightscale"]`` (our own data) and ``scope["user"]`` /
``scope["auth"]`` (what Starlette's ``request.user`` and ``requires()`` read).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.authentication import BaseUser

from freightscale.types import Scope

__all__ = [
    "Principal",
    "bind_principal",
    "bind_request_id",
    "get_principal",
    "get_request_id",
    "get_tenant_id",
    "reset_principal",
    "scope_state",
    "set_principal",
]

SCOPE_KEY = "freightscale"


@dataclass(frozen=True, slots=True)
class Principal(BaseUser):
    """Who is making the request, as verified by authentication.

    Attributes:
        user_id: the subject (``sub``) of the verified token.
        tenant_id: the tenant the principal acts for, or None for a global principal.
        roles: role names granted to the principal.
        scopes: OAuth-style scopes; Starlette's ``requires()`` checks these.
        claims: the full verified claim set.
        permissions: permissions granted through the roles (resolved by RBAC);
            ``prefix:*`` and ``*`` entries are wildcards.
    """

    user_id: str
    tenant_id: str | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    permissions: frozenset[str] = frozenset()

    def has_permission(self, permission: str) -> bool:
        """True if ``permissions`` grant ``permission`` (exact, ``prefix:*`` or ``*``)."""
        granted = self.permissions
        if permission in granted or "*" in granted:
            return True
        parts = permission.split(":")
        return any(":".join(parts[:i]) + ":*" in granted for i in range(1, len(parts)))

    @property
    def is_authenticated(self) -> bool:
        """Always true: an anonymous request has no principal at all."""
        return True

    @property
    def display_name(self) -> str:
        """The user id (Starlette's ``BaseUser`` interface)."""
        return self.user_id

    @property
    def identity(self) -> str:
        """The user id (Starlette's ``BaseUser`` interface)."""
        return self.user_id


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "freightscale_principal", default=None
)
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "freightscale_request_id", default=None
)


def scope_state(scope: Scope) -> dict[str, Any]:
    """Return freightscale's per-request dict in ``scope``, creating it if absent."""
    state: dict[str, Any] | None = scope.get(SCOPE_KEY)
    if state is None:
        state = {}
        scope[SCOPE_KEY] = state
    return state


def get_principal(scope: Scope | None = None) -> Principal | None:
    """Return the current principal (from ``scope`` when given, else the contextvar)."""
    if scope is not None:
        # Starlette's "user" key: where the auth middleware (and _record) put it.
        user = scope.get("user")
        return user if isinstance(user, Principal) else None
    return _principal.get()


def get_tenant_id(scope: Scope | None = None) -> str | None:
    """Return the current tenant id, or None when anonymous or tenant-less."""
    principal = get_principal(scope)
    return principal.tenant_id if principal is not None else None


def get_request_id() -> str | None:
    """Return the current request id, or None outside a request."""
    return _request_id.get()


def set_principal(
    principal: Principal | None, scope: Scope | None = None
) -> contextvars.Token[Principal | None]:
    """Make ``principal`` current until :func:`reset_principal` (a hot-path
    alternative to :func:`bind_principal` with no generator); record it in ``scope``."""
    if scope is not None:
        _record(principal, scope)
    return _principal.set(principal)


def _record(principal: Principal | None, scope: Scope) -> None:
    # Starlette's "user" key holds the principal; anonymous is its UnauthenticatedUser.
    if principal is not None:
        scope["user"] = principal
    elif isinstance(scope.get("user"), Principal):
        from starlette.authentication import UnauthenticatedUser

        scope["user"] = UnauthenticatedUser()


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    """Undo :func:`set_principal`."""
    _principal.reset(token)


@contextmanager
def bind_principal(principal: Principal | None, scope: Scope | None = None) -> Iterator[None]:
    """Make ``principal`` current for the duration of the block.

    Also records it in ``scope`` (Starlette's ``user`` key) when a scope is given.
    """
    if scope is not None:
        _record(principal, scope)
    token = _principal.set(principal)
    try:
        yield
    finally:
        _principal.reset(token)


@contextmanager
def bind_request_id(request_id: str, scope: Scope | None = None) -> Iterator[None]:
    """Make ``request_id`` current for the duration of the block."""
    if scope is not None:
        scope_state(scope)["request_id"] = request_id
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)
