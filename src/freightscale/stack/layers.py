"""The layers and shared resources ``build_stack`` knows, in the documented order.

This is the one place to edit when a component lands: add a
:class:`Component` to :data:`COMPONENTS` at its position (and a
:class:`Resource` to :data:`RESOURCES` if it needs a shared client).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from freightscale.errors import ErrorMiddleware, exception_handlers
from freightscale.exceptions import FreightScaleError
from freightscale.health import CheckFunction, engine_check, redis_check
from freightscale.settings import FreightScaleSettings
from freightscale.types import ASGIApp

if TYPE_CHECKING:
    from freightscale.backends.redis import RedisClient
    from freightscale.stack.core import Stack

__all__ = ["COMPONENTS", "RESOURCES", "Component", "Resource"]

logger = logging.getLogger("freightscale.stack")


@dataclass(frozen=True, slots=True)
class Component:
    """One middleware layer ``build_stack`` may install.

    Attributes:
        name: short name (used in logs and docs).
        enabled: decides from the settings whether the layer is installed.
        wrap: returns the middleware wrapped around ``app``; reads its
            settings and shared resources (``stack.redis``, ``stack.store(...)``)
            from the :class:`Stack`. Called once, at build time: resources
            are not open yet, so keep references to ``stack`` and resolve
            clients per request or in a startup hook, not here.
    """

    name: str
    enabled: Callable[[FreightScaleSettings], bool]
    wrap: Callable[[ASGIApp, Stack], ASGIApp]


@dataclass(frozen=True, slots=True)
class Resource:
    """A shared client opened at startup and closed at shutdown.

    Attributes:
        name: key in ``stack.resources`` and the readiness check's name.
        enabled: decides from the settings whether to open it.
        open: opens it; must not block past its own connect timeout, and
            should not fail just because the service is down (readiness
            reports that).
        close: releases it.
        check: builds its readiness check, if it has one.
    """

    name: str
    enabled: Callable[[FreightScaleSettings], bool]
    open: Callable[[Stack], Awaitable[Any]]
    close: Callable[[Any], Awaitable[None]]
    check: Callable[[Any], CheckFunction] | None = None


async def _open_redis(stack: Stack) -> RedisClient:
    from freightscale.backends.redis import create_redis_client, ping

    settings = stack.settings.redis
    client = create_redis_client(settings)
    try:
        await ping(client, timeout=settings.connect_timeout)
    except FreightScaleError as exc:
        # Not fatal: the app starts, /readyz says 503 and the client reconnects by itself.
        logger.warning(
            "redis at %s is unreachable at startup (%s); /readyz reports it until it answers",
            _without_credentials(settings.url.get_secret_value()),
            exc,
        )
    return client


def _without_credentials(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


async def _close_redis(client: RedisClient) -> None:
    await client.aclose()


def _errors(app: ASGIApp, stack: Stack) -> ASGIApp:
    # Starlette/FastAPI answer exceptions inside the app with a plain-text
    # 500; give them problem+json handlers (unless the app has its own).
    handlers = getattr(app, "exception_handlers", None)
    if isinstance(handlers, dict) and hasattr(app, "middleware_stack"):
        ours = exception_handlers()
        handlers.setdefault(FreightScaleError, ours[FreightScaleError])
        if 500 not in handlers and Exception not in handlers:
            handlers[Exception] = ours[Exception]
        app.middleware_stack = None  # rebuilt with the handlers on the next call
    return ErrorMiddleware(app, debug=stack.settings.debug)


def _database(app: ASGIApp, stack: Stack) -> ASGIApp:
    from freightscale.db import Database, DatabaseSessionMiddleware

    # Built now (no I/O: engines connect lazily); started by its Resource.
    database = Database(stack.settings.database, store=stack.lazy_store("db"))
    stack.database = database
    return DatabaseSessionMiddleware(app, database=database)


async def _open_database(stack: Stack) -> Any:
    database = stack.database
    assert database is not None, "the database component builds it"
    database.start()
    return database


async def _close_database(database: Any) -> None:
    await database.aclose()


def _database_check(database: Any) -> CheckFunction:
    return engine_check(database.engines.primary)


def _auth(app: ASGIApp, stack: Stack) -> ASGIApp:
    from freightscale.auth import Authenticator, AuthMiddleware, RedisBus

    s = stack.settings
    bus = None
    if s.redis.enabled:
        # Revocations and permission-version bumps reach every instance over
        # the shared client, which opens at startup (the bus resolves it lazily).
        bus = RedisBus(
            lambda: stack.redis,
            key_prefix=s.auth.key_prefix,
            sync_interval=s.auth.revocation_sync_interval,
        )
    authenticator = Authenticator(
        s.auth,
        store=stack.lazy_store("auth"),
        bus=bus,
        permission_loader=stack.options.get("permission_loader"),
    )
    return AuthMiddleware(app, authenticator=authenticator)


def _sessions(app: ASGIApp, stack: Stack) -> ASGIApp:
    from freightscale.sessions import SessionMiddleware
    from freightscale.sessions.redis import RedisSessionBackend

    s = stack.settings
    backend = None
    if not s.sessions.store_url.get_secret_value() and s.redis.enabled:
        # The shared client opens at startup: hand over a getter, resolved on first use.
        backend = RedisSessionBackend(lambda: _require_redis(stack), key_prefix=s.redis.key_prefix)
    return SessionMiddleware(app, s.sessions, backend=backend, redis_settings=s.redis)


def _require_redis(stack: Stack) -> RedisClient:
    client = stack.redis
    if client is None:
        raise RuntimeError("the shared Redis client is not open yet (it opens at startup)")
    return client


def _cache(app: ASGIApp, stack: Stack) -> ASGIApp:
    from freightscale.caching import ResponseCacheMiddleware

    return ResponseCacheMiddleware(
        app,
        stack.settings.cache,
        store=lambda: stack.store("http"),
        purge=stack.options.get("purge_hook"),  # a CDN purge callable from code, if any
    )


def _compression(app: ASGIApp, stack: Stack) -> ASGIApp:
    from freightscale.compression import CompressionMiddleware

    return CompressionMiddleware(app, stack.settings.compression)


def _decompression(app: ASGIApp, stack: Stack) -> ASGIApp:
    from freightscale.decompression import RequestDecompressionMiddleware

    return RequestDecompressionMiddleware(app, stack.settings.decompression)


RESOURCES: tuple[Resource, ...] = (
    Resource("redis", lambda s: s.redis.enabled, _open_redis, _close_redis, redis_check),
    Resource(
        "database",
        lambda s: s.database.enabled,
        _open_database,
        _close_database,
        _database_check,
    ),
)
"""Shared clients, opened in this order and closed in reverse."""

COMPONENTS: tuple[Component, ...] = (
    # 1. telemetry and the health endpoints are placed by build_stack itself (outermost).
    Component("errors", lambda s: True, _errors),
    # 3. per-IP rate limit           Component("ratelimit.ip", lambda s: s.ratelimit.enabled, …)
    Component("auth", lambda s: s.auth.enabled, _auth),
    # 5. per-user/tenant rate limit  Component("ratelimit.user", lambda s: s.ratelimit.enabled, …)
    # Request bodies are inflated lazily (only as the app reads them) and only
    # for requests that got past the limits and authentication above.
    Component("decompression", lambda s: s.decompression.enabled, _decompression),
    # 6. the response cache sits outside compression and stores the
    #    compressed variants it sees, so a hit costs no compression work.
    Component("cache", lambda s: s.cache.enabled, _cache),
    Component("compression", lambda s: s.compression.enabled, _compression),
    # 8. sessions load lazily: a request that never touches one costs nothing.
    Component("sessions", lambda s: s.sessions.enabled, _sessions),
    # 9. one database session per request, innermost: it reads the principal
    #    (and session id) that the layers above set, for read-your-writes.
    Component("database", lambda s: s.database.enabled, _database),
)
"""Middleware layers, outermost first (after telemetry and health)."""
