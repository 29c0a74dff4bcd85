"""``build_stack``: every component in the documented order, plus their resources.

Request path, outermost first (DESIGN.md explains why)::

    1 telemetry  (request id + span)         TelemetryMiddleware
      health endpoints (/healthz, /readyz)   answered here: outside everything below
    2 errors     (problem+json)              ErrorMiddleware
    3 per-IP rate limit                      (not yet)
    4 authentication + tenant context        (not yet)
    5 per-user/tenant rate limit             (not yet)
    5b request decompression                 RequestDecompressionMiddleware
    6 response cache                         (not yet)
    7 compression                            (not yet)
    8 sessions                               (not yet)
    9 the app

Shared resources (the Redis client, later the database engines) are opened
in the ASGI lifespan startup and closed at shutdown, around the wrapped app's
own lifespan. When the server sends no lifespan events, they are opened on
the first request instead (once, under a lock).

Adding a component is one :class:`Component` entry in :data:`COMPONENTS`
(and, if it owns a client, one :class:`Resource` in :data:`RESOURCES`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from freightscale.context import scope_state
from freightscale.errors import ErrorMiddleware, exception_handlers
from freightscale.exceptions import FreightScaleError
from freightscale.health import CheckFunction, HealthApp, redis_check
from freightscale.settings import FreightScaleSettings
from freightscale.stores.base import Store
from freightscale.stores.memory import MemoryStore
from freightscale.telemetry import TelemetryMiddleware
from freightscale.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from freightscale.backends.redis import RedisClient

__all__ = ["COMPONENTS", "RESOURCES", "Component", "Resource", "Stack", "build_stack"]

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


def _decompression(app: ASGIApp, stack: Stack) -> ASGIApp:
    from freightscale.decompression import RequestDecompressionMiddleware

    return RequestDecompressionMiddleware(app, stack.settings.decompression)


RESOURCES: tuple[Resource, ...] = (
    Resource("redis", lambda s: s.redis.enabled, _open_redis, _close_redis, redis_check),
    # database: the db layer adds its engines here (check: health.engine_check).
)
"""Shared clients, opened in this order and closed in reverse."""

COMPONENTS: tuple[Component, ...] = (
    # 1. telemetry and the health endpoints are placed by build_stack itself (outermost).
    Component("errors", lambda s: True, _errors),
    # 3. per-IP rate limit           Component("ratelimit.ip", lambda s: s.ratelimit.enabled, …)
    # 4. authentication + tenant     Component("auth", lambda s: s.auth.enabled, …)
    # 5. per-user/tenant rate limit  Component("ratelimit.user", lambda s: s.ratelimit.enabled, …)
    # Request bodies are inflated lazily (only as the app reads them) and only
    # for requests that got past the limits and authentication above.
    Component("decompression", lambda s: s.decompression.enabled, _decompression),
    # 6. response cache              Component("cache", lambda s: s.cache.enabled, …)
    # 7. compression                 Component("compression", lambda s: s.compression.enabled, …)
    # 8. sessions                    Component("sessions", lambda s: s.sessions.enabled, …)
)
"""Middleware layers, outermost first (after telemetry and health)."""


class Stack:
    """The ASGI app ``build_stack`` returns; also the handle on shared resources.

    Attributes:
        app: the wrapped application.
        settings: the settings it was built with.
        health: the health app (register more checks on it).
        resources: opened resources by name (``"redis"``); empty before startup.
        components: names of the installed layers, outermost first.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: FreightScaleSettings,
        *,
        health: HealthApp,
        components: tuple[Component, ...],
        resources: tuple[Resource, ...],
    ) -> None:
        self.app = app
        self.settings = settings
        self.health = health
        self.resources: dict[str, Any] = {}
        self._resource_specs = resources
        self._stores: dict[str, Store] = {}
        self._started = False
        self._lock: asyncio.Lock | None = None

        inner = app
        for component in reversed(components):
            inner = component.wrap(inner, self)
        self.components = tuple(c.name for c in components)
        if settings.health.enabled:
            inner = _HealthRouter(inner, health)
            self.components = ("health", *self.components)
        if settings.telemetry.enabled:
            inner = TelemetryMiddleware(inner, settings.telemetry)
            self.components = ("telemetry", *self.components)
        self._chain: ASGIApp = inner

    @property
    def started(self) -> bool:
        """True once the resources are open."""
        return self._started

    @property
    def redis(self) -> RedisClient | None:
        """The shared Redis client, or None when no Redis URL is set (or before startup)."""
        client: RedisClient | None = self.resources.get("redis")
        return client

    def store(self, namespace: str) -> Store:
        """Return the shared store for ``namespace`` (one instance per namespace).

        A :class:`~freightscale.stores.redis.RedisStore` on the shared client
        when Redis is configured, else a bounded in-process
        :class:`~freightscale.stores.MemoryStore`. Call it after startup.
        """
        store = self._stores.get(namespace)
        if store is None:
            if self.settings.redis.enabled:
                client = self.redis
                if client is None:
                    raise RuntimeError(
                        f"stack.store({namespace!r}) needs the Redis client, which opens at "
                        f"startup; call it from a request or a startup hook"
                    )
                from freightscale.stores.redis import RedisStore

                store = RedisStore(
                    client,
                    key_prefix=self.settings.redis.key_prefix,
                    namespace=namespace,
                    check_timeout=self.settings.redis.socket_timeout,
                )
            else:
                store = MemoryStore(namespace=namespace)
            self._stores[namespace] = store
        return store

    async def startup(self) -> None:
        """Open the resources and register their readiness checks (idempotent)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._started:
                return
            opened: list[tuple[Resource, Any]] = []
            try:
                for spec in self._resource_specs:
                    if not spec.enabled(self.settings):
                        continue
                    value = await spec.open(self)
                    opened.append((spec, value))
                    self.resources[spec.name] = value
            except BaseException:
                await _close_all(opened)
                self.resources.clear()
                raise
            for spec, value in opened:
                if spec.check is not None and spec.name not in self.health.check_names:
                    self.health.register(spec.name, spec.check(value))
            self._started = True

    async def aclose(self) -> None:
        """Close the resources opened by :meth:`startup` (idempotent)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self._started:
                return
            opened = [
                (s, self.resources[s.name])
                for s in self._resource_specs
                if s.name in self.resources
            ]
            for spec, _ in opened:
                self.health.unregister(spec.name)
            self._stores.clear()
            self.resources.clear()
            self._started = False
            await _close_all(opened)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if not self._started:
            await self.startup()  # the server sent no lifespan events
        scope_state(scope)["stack"] = self
        await self._chain(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state")
        if isinstance(state, dict):
            state["freightscale"] = self  # request.state.freightscale in Starlette
        inner = _InnerLifespan(self._chain, scope)
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            await self.startup()
        except BaseException as exc:
            logger.exception("freightscale startup failed")
            await send({"type": "lifespan.startup.failed", "message": repr(exc)})
            if not isinstance(exc, Exception):
                raise
            return
        failure = await inner.send_and_wait("lifespan.startup")
        if failure is not None:
            await self.aclose()
            await send({"type": "lifespan.startup.failed", "message": failure})
            return
        await send({"type": "lifespan.startup.complete"})

        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        failure = await inner.send_and_wait("lifespan.shutdown")
        try:
            await self.aclose()
        except Exception as exc:
            logger.exception("freightscale shutdown failed")
            failure = failure or repr(exc)
        if failure is not None:
            await send({"type": "lifespan.shutdown.failed", "message": failure})
        else:
            await send({"type": "lifespan.shutdown.complete"})


async def _close_all(opened: list[tuple[Resource, Any]]) -> None:
    for spec, value in reversed(opened):
        try:
            await spec.close(value)
        except Exception:
            logger.exception("closing %s failed", spec.name)


class _InnerLifespan:
    """Runs the wrapped app's lifespan as a task, one event at a time.

    An app that returns or raises before answering startup does not support
    lifespan (the ASGI spec's rule); the stack then carries on without it.
    """

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self._app = app
        self._scope = scope
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Future[None] | None = None
        self._supported = True

    async def send_and_wait(self, event: str) -> str | None:
        """Deliver ``event``; return the app's failure message, or None on success."""
        if not self._supported:
            return None
        if self._task is None:
            self._task = asyncio.ensure_future(
                self._app(self._scope, self._inbox.get, self._outbox.put)
            )
            self._task.add_done_callback(_retrieve)
        await self._inbox.put({"type": event})
        reply = asyncio.ensure_future(self._outbox.get())
        await asyncio.wait((reply, self._task), return_when=asyncio.FIRST_COMPLETED)
        if reply.done():
            answer = reply.result()
            if answer["type"] == f"{event}.complete":
                return None
            return str(answer.get("message", "")) or f"{event} failed"
        reply.cancel()
        # The app ended without answering.
        error = None if self._task.cancelled() else self._task.exception()
        if event == "lifespan.startup":
            self._supported = False
            if error is not None:
                logger.info("the wrapped app does not support lifespan (%r); continuing", error)
            return None
        return repr(error) if error is not None else None


def _retrieve(task: asyncio.Future[None]) -> None:
    # The error (if any) is reported through the lifespan messages; this only
    # keeps asyncio from logging "exception was never retrieved".
    if not task.cancelled():
        task.exception()


class _HealthRouter:
    """Answers the health paths before any component below telemetry sees them."""

    def __init__(self, app: ASGIApp, health: HealthApp) -> None:
        self.app = app
        self.health = health
        self.paths = health.paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :] or "/"
            if path in self.paths:
                await self.health(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_stack(
    app: ASGIApp,
    settings: FreightScaleSettings | None = None,
    *,
    health: HealthApp | None = None,
    checks: Mapping[str, CheckFunction] | None = None,
) -> Stack:
    """Wrap ``app`` in every enabled component, in the documented order.

    Args:
        app: any ASGI app (Starlette, FastAPI, a bare callable).
        settings: all settings; ``FreightScaleSettings()`` (the environment) when omitted.
        health: a health app to serve instead of one built from ``settings.health``.
        checks: extra readiness checks by name (a check per configured
            service is added at startup).

    Returns:
        The :class:`Stack`: an ASGI app that also holds the shared resources.
    """
    settings = settings or FreightScaleSettings()
    health = health or HealthApp(settings.health)
    for name, check in (checks or {}).items():
        health.register(name, check)
    components = tuple(c for c in COMPONENTS if c.enabled(settings))
    return Stack(app, settings, health=health, components=components, resources=RESOURCES)
