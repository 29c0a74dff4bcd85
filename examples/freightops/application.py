"""``create_app()``: FreightOps composed from its feature modules and freightscale.

The request path, outermost first::

    build_stack:  telemetry → health (/healthz, /readyz) → errors → database
    example:      authentication (stand-in) → per-tenant plan limits (stand-in)
                  → freightscale response cache → freightscale compression
    app:          Starlette routes from examples/freightops/features/*
                  (indexed router), tagging their responses for the cache

The cache and compression are placed here, inside the example's
authentication, because the cache must see the tenant and the verified
role; once authentication is a ``build_stack`` layer they become settings.
The naive profile keeps only the error handler and swaps in the legacy
authentication (file sessions + a permission query per request).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import freightscale
from examples.freightops.config import AppConfig
from examples.freightops.features import all_routes
from examples.freightops.naive import NaiveAuthMiddleware
from examples.freightops.runtime import Services, services
from examples.freightops.seed import prepare_database
from examples.freightops.standins import ROLE_HEADER, AuthMiddleware, PlanRateLimitMiddleware
from examples.freightops.web import JSON, Problem, database_error_handler, problem_handler
from freightscale.caching import ResponseCacheMiddleware
from freightscale.compression import CompressionMiddleware
from freightscale.errors import ErrorMiddleware
from freightscale.routing import use_indexed_router
from freightscale.settings import FreightScaleSettings
from freightscale.settings.cache import CacheRule, CacheSettings
from freightscale.stack import build_stack
from freightscale.types import ASGIApp

__all__ = ["create_app"]

_STARTED = time.monotonic()


async def index(request: Request) -> Response:
    """``GET /``: what this server is and where to start."""
    svc = services(request)
    return JSON(
        {
            "app": "FreightOps (freightscale example)",
            "profile": svc.config.profile,
            "database": svc.engine.dialect.name,
            "login": 'POST /api/auth/login {"email": ..., "password": ...}',
            "docs": "docs/example.md",
        }
    )


async def status(request: Request) -> Response:
    """``GET /api/v1/status``: what this instance is and what it is connected to."""
    svc = services(request)
    stack = request.scope.get("freightscale", {}).get("stack")
    return JSON(
        {
            "service": "freightops",
            "freightscale": freightscale.__version__,
            "profile": svc.config.profile,
            "environment": svc.settings.environment,
            "uptime_seconds": round(time.monotonic() - _STARTED, 3),
            "database": svc.engine.dialect.name,
            "redis": "configured" if svc.settings.redis.enabled else "embedded (memory)",
            "components": list(stack.components) if stack is not None else [],
            "request_id": freightscale.get_request_id(),
        }
    )


def cache_settings(settings: FreightScaleSettings, config: AppConfig) -> CacheSettings:
    """The response cache's rules for FreightOps' read routes.

    Every rule is tenant-scoped and varies on the verified role header, so a
    cached body is only ever served to the same tenant *and* role (whose
    permission check it passed). Handlers tag their responses (``@cached``)
    and writes invalidate those tags; the dashboard is TTL-only.
    """
    role = ROLE_HEADER.decode()

    def rule(path: str, ttl: float = config.list_cache_ttl) -> CacheRule:
        return CacheRule(path=path, scope="tenant", ttl=ttl, vary=(role,))

    rules = (
        rule("/api/shipments"),
        rule("/api/shipments/{id}"),
        rule("/api/shipments/{id}/events"),
        rule("/api/loads"),
        rule("/api/carriers"),
        rule("/api/drivers"),
        rule("/api/quotes"),
        rule("/api/rates"),
        rule("/api/invoices"),
        rule("/api/users"),
        rule("/api/dashboard", ttl=config.dashboard_cache_ttl),
    )
    return settings.cache.model_copy(update={"enabled": True, "rules": rules})


def create_app(
    settings: FreightScaleSettings | None = None, config: AppConfig | None = None
) -> ASGIApp:
    """Build the FreightOps ASGI app.

    Args:
        settings: freightscale's settings (``FREIGHTSCALE_*``); read from the
            environment when omitted.
        config: the example's own settings (``FREIGHTOPS_*``); likewise.
    """
    settings = settings or FreightScaleSettings()
    config = config or AppConfig()
    svc = Services.open(settings, config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if config.seed_on_startup:
            await prepare_database(svc.engine, shipments=config.seed_shipments)
        try:
            yield
        finally:
            await svc.aclose()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/v1/status", status, methods=["GET"]),
        *all_routes(),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            Problem: problem_handler,
            # Pool timeouts, refused or timed-out connections, a lost server.
            SQLAlchemyError: database_error_handler,
            OSError: database_error_handler,  # includes ConnectionError, TimeoutError
        },
        lifespan=lifespan,
    )
    app.state.services = svc

    if config.naive:
        return ErrorMiddleware(NaiveAuthMiddleware(app, svc), debug=settings.debug)

    # Route dispatch that does not try every route's regex in turn.
    use_indexed_router(app)
    # The documented order inside the stack: auth → limits → cache → compression → app.
    # Until auth is a build_stack layer, the example places the cache and the
    # compression itself, inside its authentication (the cache must see the tenant).
    inner: ASGIApp = CompressionMiddleware(app, settings.compression)
    cache = ResponseCacheMiddleware(inner, cache_settings(settings, config), store=svc.root_store)
    svc.response_cache = cache.cache
    inner = cache
    inner = PlanRateLimitMiddleware(inner, svc)
    inner = AuthMiddleware(inner, svc)
    # telemetry → health (/healthz, /readyz) → errors → database → the example's layers.
    off = {"enabled": False}
    stack_settings = settings.model_copy(
        update={
            "cache": settings.cache.model_copy(update=off),
            "compression": settings.compression.model_copy(update=off),
        }
    )
    stack = build_stack(inner, stack_settings)
    database = getattr(stack, "database", None)
    if database is not None:
        # FREIGHTSCALE_DATABASE__ENABLED: the stack owns the engines (and checks
        # them in /readyz); use its pools rather than opening a second set.
        svc.adopt_engines(database.engines)
    return stack
