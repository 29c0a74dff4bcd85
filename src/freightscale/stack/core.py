"""The :class:`Stack` app and :func:`build_stack`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from freightscale.context import scope_state
from freightscale.health import CheckFunction, HealthApp
from freightscale.settings import FreightScaleSettings
from freightscale.stack import layers
from freightscale.stack.drain import Drain
from freightscale.stack.layers import Component, Resource
from freightscale.stack.lifespan import InnerLifespan
from freightscale.stores.base import Store, join_namespace
from freightscale.stores.memory import MemoryStore
from freightscale.telemetry import TelemetryMiddleware
from freightscale.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from freightscale.auth import PermissionLoader
    from freightscale.backends.redis import RedisClient
    from freightscale.db import Database

__all__ = ["Stack", "build_stack"]

logger = logging.getLogger("freightscale.stack")


class Stack:
    """The ASGI app ``build_stack`` returns; also the handle on shared resources.

    Attributes:
        app: the wrapped application.
        settings: the settings it was built with.
        health: the health app (register more checks on it).
        resources: opened resources by name (``"redis"``); empty before startup.
        components: names of the installed layers, outermost first.
        drain: in-flight count and the graceful drain on shutdown.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: FreightScaleSettings,
        *,
        health: HealthApp,
        components: tuple[Component, ...],
        resources: tuple[Resource, ...],
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.health = health
        self.resources: dict[str, Any] = {}
        self._resource_specs = resources
        self._stores: dict[str, Store] = {}
        self.database: Database | None = None
        """The request-scoped database layer, when ``settings.database.enabled``."""
        self._started = False
        self._lock: asyncio.Lock | None = None
        self.drain = Drain(settings.health, health)

        self.options: dict[str, Any] = dict(options or {})
        """Live objects for components (``permission_loader`` …), from ``build_stack``."""
        self.layers: dict[str, Any] = {}
        """The middleware object of each installed component, by name."""
        inner = app
        for component in reversed(components):
            inner = component.wrap(inner, self)
            self.layers[component.name] = inner
        self.components = tuple(c.name for c in components)
        if settings.health.enabled:
            inner = _HealthRouter(inner, health)
            self.components = ("health", *self.components)
        if settings.telemetry.metrics_path:
            inner = _metrics_router(inner, settings, health, self.options)
            self.components = ("metrics", *self.components)
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

    def lazy_store(self, namespace: str) -> Store:
        """Return a store for ``namespace`` usable before startup.

        Components are built before the shared clients open; this view
        resolves :meth:`store` on each call, so a component can hold it
        from construction on.
        """
        return _LazyStore(self, namespace)

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
            # Layers that warm up on the open resources (e.g. the rate limiter
            # loads its script): a failure is logged, the layer's own failure
            # policy covers the requests.
            for name in self.components:
                warm = getattr(self.layers.get(name), "startup", None)
                if warm is not None:
                    try:
                        await warm()
                    except Exception:
                        logger.exception("starting the %s layer failed", name)
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
            # Layers first (they use the resources), innermost first.
            for name in reversed(self.components):
                closer = getattr(self.layers.get(name), "aclose", None)
                if closer is not None:
                    try:
                        await closer()
                    except Exception:
                        logger.exception("closing the %s layer failed", name)
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
        if scope["type"] == "http":
            await self.drain.serve(self._chain, scope, receive, send)
        else:
            await self._chain(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state")
        if isinstance(state, dict):
            state["freightscale"] = self  # request.state.freightscale in Starlette
        inner = InnerLifespan(self._chain, scope)
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
        self.drain.start()  # hooks SIGTERM / SIGINT
        await send({"type": "lifespan.startup.complete"})

        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        await self.drain.shutdown()  # readiness 503, drain_delay, in-flight requests
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


def _metrics_router(
    app: ASGIApp, settings: FreightScaleSettings, health: HealthApp, options: Mapping[str, Any]
) -> ASGIApp:
    """Serve the Prometheus endpoint at ``metrics_path`` in front of ``app``."""
    from freightscale.exceptions import ConfigurationError
    from freightscale.telemetry.prometheus import MetricsApp, install_prometheus

    path = settings.telemetry.metrics_path
    if settings.health.enabled and path in health.paths:
        raise ConfigurationError(
            f"telemetry.metrics_path {path!r} is also a health path; give it its own path"
        )
    registry = options.get("metrics_registry")
    install_prometheus(options.get("meter_provider"), registry=registry)
    return _MetricsRouter(app, MetricsApp(registry), path)


class _MetricsRouter:
    """Answers ``metrics_path`` before any component below telemetry sees it."""

    def __init__(self, app: ASGIApp, metrics: ASGIApp, path: str) -> None:
        self.app = app
        self.metrics = metrics
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :] or "/"
            if path == self.path:
                await self.metrics(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_stack(
    app: ASGIApp,
    settings: FreightScaleSettings | None = None,
    *,
    health: HealthApp | None = None,
    checks: Mapping[str, CheckFunction] | None = None,
    permission_loader: PermissionLoader | None = None,
    **options: Any,
) -> Stack:
    """Wrap ``app`` in every enabled component, in the documented order.

    Args:
        app: any ASGI app (Starlette, FastAPI, a bare callable).
        settings: all settings; ``FreightScaleSettings()`` (the environment) when omitted.
        health: a health app to serve instead of one built from ``settings.health``.
        checks: extra readiness checks by name (a check per configured
            service is added at startup).
        permission_loader: the app's async ``(tenant_id, roles) -> permissions``
            loader for the authentication layer's RBAC cache.
        options: live objects other components accept, kept in
            ``stack.options``: ``ratelimit_plan_loader`` (per-tenant limits,
            see the rate-limiting page), ``purge_hook`` (a CDN purge
            callable, see the caching page), and for ``telemetry.metrics_path``
            ``meter_provider`` (the app's own SDK provider) and
            ``metrics_registry`` (the ``prometheus_client`` registry to serve).

    Returns:
        The :class:`Stack`: an ASGI app that also holds the shared resources.
    """
    settings = settings or FreightScaleSettings()
    health = health or HealthApp(settings.health)
    for name, check in (checks or {}).items():
        health.register(name, check)
    components = tuple(c for c in layers.COMPONENTS if c.enabled(settings))
    options["permission_loader"] = permission_loader
    return Stack(
        app,
        settings,
        health=health,
        components=components,
        resources=layers.RESOURCES,
        options=options,
    )


class _LazyStore:
    """A :class:`Store` that resolves ``stack.store(namespace)`` at each call."""

    def __init__(self, stack: Stack, namespace: str) -> None:
        self._stack = stack
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"LazyStore(namespace={self.namespace!r})"

    @property
    def _store(self) -> Store:
        return self._stack.store(self.namespace)

    async def get(self, key: str) -> bytes | None:
        return await self._store.get(key)

    async def set(self, key: str, value: bytes, *, expires_in: float | None = None) -> None:
        await self._store.set(key, value, expires_in=expires_in)

    async def delete(self, key: str) -> bool:
        return await self._store.delete(key)

    async def exists(self, key: str) -> bool:
        return await self._store.exists(key)

    async def expires_in(self, key: str) -> float | None:
        return await self._store.expires_in(key)

    async def incr(self, key: str, amount: int = 1, *, expires_in: float | None = None) -> int:
        return await self._store.incr(key, amount, expires_in=expires_in)

    async def delete_all(self) -> None:
        await self._store.delete_all()

    async def check(self) -> None:
        await self._store.check()

    async def aclose(self) -> None:
        """The stack owns the shared client: nothing to close here."""

    def with_namespace(self, namespace: str) -> Store:
        return _LazyStore(self._stack, join_namespace(self.namespace, namespace))
