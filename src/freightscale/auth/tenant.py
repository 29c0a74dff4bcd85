"""Tenant context: checks against the request, and the PostgreSQL RLS hook.

The tenant always comes from the verified token. A header or the host may
name a tenant only when the settings allow it, and then it must match the
token's; a path that names another tenant (``/tenants/<id>/…``) is refused.

:func:`install_tenant_guc` makes every transaction of a SQLAlchemy session
(or engine) start with ``SET LOCAL app.tenant_id = <current tenant>``, so
PostgreSQL row-level-security policies can filter on
``current_setting('app.tenant_id', true)``.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import event, text

from freightscale.context import Principal, get_tenant_id
from freightscale.settings.auth import AuthSettings
from freightscale.types import Scope

__all__ = ["TenantGuard", "install_tenant_guc"]


class TenantGuard:
    """Check that a request's tenant hints agree with the principal's tenant.

    Args:
        settings: ``tenant_header``, ``tenant_host_suffix`` and ``tenant_path_pattern``.
    """

    def __init__(self, settings: AuthSettings) -> None:
        pattern = settings.tenant_path_pattern
        self._path = re.compile(pattern) if pattern else None
        self._header = settings.tenant_header.lower().encode() if settings.tenant_header else None
        self._host_suffix = (settings.tenant_host_suffix or "").lower() or None
        self.active = bool(self._path or self._header or self._host_suffix)
        """False when nothing is configured: :meth:`violation` would always say None."""
        self.checks_headers = bool(self._header or self._host_suffix)
        """True when :meth:`violation` reads the request's headers."""
        self.path_prefix = _literal_prefix(pattern) if pattern else ""
        """Every path the tenant path pattern matches starts with this ("" when unknown):
        unless :attr:`checks_headers`, a path without it has no violation to find."""

    def violation(self, scope: Scope, principal: Principal) -> str | None:
        """Return why the request may not proceed for ``principal``, or None."""
        tenant = principal.tenant_id
        path: str = scope.get("path", "")
        if self._path is not None and path.startswith(self.path_prefix):
            match = self._path.match(path)
            if match is not None and match.group("tenant") != tenant:
                return "this path belongs to another tenant"
        if self._header is None and self._host_suffix is None:
            return None
        for name, value in scope.get("headers", ()):
            if name == self._header:
                if value.decode("latin-1").strip() != tenant:
                    return "the tenant header does not match the token's tenant"
            elif name == b"host" and self._host_suffix is not None:
                host = value.decode("latin-1").lower().split(":", 1)[0]
                if host.endswith(self._host_suffix):
                    label = host[: -len(self._host_suffix)]
                    if label and label != (tenant or "").lower():
                        return "the host names another tenant than the token's"
        return None


# Characters that stand for themselves in a Python regex wherever they appear.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/-_")


def _literal_prefix(pattern: str) -> str:
    """A prefix of every string ``re.match(pattern, s)`` matches; "" when not sure.

    Conservative: only plain characters after an optional leading ``^``, none
    with a quantifier after it, and nothing at all when the pattern has an
    alternation anywhere (or starts with a group or inline flags).
    """
    if "|" in pattern:
        return ""
    body = pattern[1:] if pattern.startswith("^") else pattern
    end = 0
    while end < len(body) and body[end] in _PLAIN:
        end += 1
    if 0 < end < len(body) and body[end] in "*+?{":
        end -= 1  # the quantifier makes the last character optional or repeatable
    return body[:end]


_SET_TENANT = text("SELECT set_config(:name, :tenant, true)")


def install_tenant_guc(target: Any, *, setting: str = "app.tenant_id") -> None:
    """Set ``setting`` to the current tenant at the start of every transaction.

    ``set_config(name, value, true)`` is ``SET LOCAL`` with bound parameters:
    the value lasts until the transaction ends, so a pooled connection never
    carries one request's tenant into another's. Nothing is sent when the
    request has no tenant.

    Args:
        target: a SQLAlchemy ``Session`` / ``AsyncSession`` / ``sessionmaker`` /
            ``async_sessionmaker`` (or their classes), or an ``Engine`` / ``AsyncEngine``.
        setting: the PostgreSQL custom setting to set.

    Raises:
        TypeError: for anything else.
    """
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
    from sqlalchemy.orm import Session, sessionmaker

    params = {"name": setting}
    if isinstance(target, AsyncEngine):
        target = target.sync_engine
    if isinstance(target, Engine):

        def on_begin(conn: Connection) -> None:
            tenant = get_tenant_id()
            if tenant is not None:
                conn.execute(_SET_TENANT, {**params, "tenant": tenant})

        event.listen(target, "begin", on_begin)
        return
    if isinstance(target, AsyncSession):
        target = target.sync_session
    elif isinstance(target, async_sessionmaker):
        target = _sessionmaker_sync_class(target)
    if isinstance(target, Session | sessionmaker) or (
        isinstance(target, type) and issubclass(target, Session)
    ):

        def after_begin(session: Session, transaction: Any, conn: Connection) -> None:
            tenant = get_tenant_id()
            if tenant is not None:
                conn.execute(_SET_TENANT, {**params, "tenant": tenant})

        event.listen(target, "after_begin", after_begin)
        return
    raise TypeError(
        f"install_tenant_guc() needs a SQLAlchemy session, sessionmaker or engine, "
        f"not {type(target).__name__}"
    )


def _sessionmaker_sync_class(factory: Any) -> Any:
    # async_sessionmaker builds AsyncSession(sync_session_class=...): listen on that class,
    # made private to this factory so other factories are not affected.
    from sqlalchemy.orm import Session

    base = factory.kw.get("sync_session_class") or getattr(
        factory.class_, "sync_session_class", Session
    )
    private = type(f"Tenant{base.__name__}", (base,), {})
    factory.kw["sync_session_class"] = private
    return private
