"""``create_app()``: FreightOps composed from its feature modules and freightscale.

The request path, outermost first::

    build_stack:  telemetry → health (/healthz, /readyz) → errors
                  → [per-IP limits] → freightscale.auth (bearer JWT, RBAC, revocation)
                  → per-tenant limits by plan (freightscale.ratelimit)
                  → response cache (keyed on the verified principal)
                  → compression → sessions (the web login) → database
    example:      cookie login: a session cookie → the principal (stand-in)
    app:          Starlette routes from examples/freightops/features/*
                  (indexed router), guarded by ``require_permission`` and
                  tagging their responses for the cache

The naive profile keeps only the error handler and swaps in the legacy
authentication (file sessions + a permission query per request).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from pydantic import SecretStr
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
from examples.freightops.security import TOKEN_ISSUER, permission_loader, plan_loader
from examples.freightops.seed import prepare_database
from examples.freightops.standins import SESSION_COOKIE, CookieLoginMiddleware
from examples.freightops.web import JSON, Problem, database_error_handler, problem_handler
from freightscale.auth import AuthSettings, TokenIssuer
from freightscale.errors import ErrorMiddleware
from freightscale.routing import use_indexed_router
from freightscale.settings import FreightScaleSettings
from freightscale.settings.cache import CacheRule, CacheSettings
from freightscale.settings.ratelimit import RateLimitSettings
from freightscale.settings.sessions import SessionSettings
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

    The cache runs inside ``freightscale.auth`` in the stack, so it keys on
    the verified principal. A cache hit is answered before the route's
    ``require_permission`` runs, so a body may only be shared by requests
    that would all pass that check: ``tenant`` scope for the shipment reads
    (every role holds ``shipments:read``), ``role`` scope for the routes only
    some roles may read (a driver never gets an accountant's cached invoices,
    but every dispatcher of a tenant shares one copy). No read route's body
    depends on who the user is, so none needs ``user`` scope. Handlers tag
    their responses (``@cached``) and writes invalidate those tags; the
    dashboard is TTL-only.
    """

    def rule(
        path: str, scope: Literal["tenant", "role"] = "role", ttl: float = config.list_cache_ttl
    ) -> CacheRule:
        return CacheRule(path=path, scope=scope, ttl=ttl)

    rules = (
        rule("/api/shipments", "tenant"),
        rule("/api/shipments/{id}", "tenant"),
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


def auth_settings(settings: FreightScaleSettings, svc: Services) -> AuthSettings:
    """freightscale.auth for FreightOps: HS256 tokens the login route issues.

    ``FREIGHTSCALE_AUTH__*`` still configure everything else (cache sizes,
    revocation fail mode, …); the example only turns the layer on, fills in
    the per-process secret of the embedded demo, and makes a revocation
    outlive the longest token.
    """
    current = settings.auth
    retention = max(current.revocation_retention, float(svc.config.token_ttl + 120))
    return current.model_copy(
        update={
            "enabled": True,
            "secret": SecretStr(svc.secret),
            "issuer": current.issuer or TOKEN_ISSUER,
            "required_claims": sorted({*current.required_claims, "tenant"}),
            "revocation_retention": min(retention, 30 * 86_400.0),
        }
    )


def session_settings(settings: FreightScaleSettings, svc: Services) -> SessionSettings:
    """freightscale.sessions for the web login (cookie ``fo_session``).

    ``FREIGHTSCALE_SESSIONS__*`` configure the rest. Unless set there, the
    signing key is derived from the token secret (so every worker with the
    same ``FREIGHTSCALE_AUTH__SECRET`` verifies the same cookies), the cookie
    lives as long as a token, and it is ``Secure`` outside development.
    """
    current = settings.sessions
    given = current.model_fields_set
    update: dict[str, object] = {"enabled": True}
    if not current.secret_keys:
        derived = hmac.new(svc.secret.encode(), b"freightops sessions", hashlib.sha256)
        update["secret_keys"] = [SecretStr(derived.hexdigest())]
    if "cookie_name" not in given:
        update["cookie_name"] = SESSION_COOKIE
    if "max_age" not in given:
        update["max_age"] = svc.config.token_ttl
    if "secure" not in given:
        update["secure"] = settings.environment != "development"
    return current.model_copy(update=update)


def ratelimit_settings(settings: FreightScaleSettings, config: AppConfig) -> RateLimitSettings:
    """freightscale.ratelimit for FreightOps: one rule per tenant, limits by plan.

    The rule is keyed by ``tenant`` (the principal auth verified; requests
    without one, e.g. the login itself, count per client IP) and the plan
    loader gives each tenant its plan's limits. Unless set in the
    environment, the rule's own limits (used when the plan cannot be read)
    are the ``standard`` plan's, the strategy is the cheap fixed window, and
    the rule is ``approximate``: each instance counts locally and reconciles
    with Redis every 50 ms in the background: no Redis round trip per request,
    and a plan limit tolerates the documented overshoot (a single worker is
    exact; N workers may admit a few requests per sync interval more).
    ``FREIGHTSCALE_RATELIMIT__IP_LIMITS`` adds the per-IP layer outside auth.
    """
    current = settings.ratelimit
    update: dict[str, object] = {"enabled": True, "key": "tenant"}
    if "default" not in current.model_fields_set:
        update["default"] = config.plan_limits.get("standard", current.default)
    if "strategy" not in current.model_fields_set:
        update["strategy"] = "fixed-window"
    if "approximate" not in current.model_fields_set:
        update["approximate"] = True
    return current.model_copy(update=update)


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
    # build_stack places every layer, outermost first: telemetry → health →
    # errors → [per-IP limits] → auth (bearer JWT) → per-tenant limits → cache
    # → compression → sessions → database.
    # The web login's cookie is turned into a principal next to the routes.
    inner: ASGIApp = CookieLoginMiddleware(app, svc)
    on = {"enabled": True}
    stack_settings = settings.model_copy(
        update={
            "auth": auth_settings(settings, svc),
            "ratelimit": ratelimit_settings(settings, config),
            "sessions": session_settings(settings, svc),
            "cache": cache_settings(settings, config),
            "compression": settings.compression.model_copy(update=on),
        }
    )
    stack = build_stack(
        inner,
        stack_settings,
        permission_loader=permission_loader(svc.choose_read_engine),
        ratelimit_plan_loader=plan_loader(svc.choose_read_engine, config.plan_limits),
    )
    svc.auth = stack.layers["auth"].authenticator
    svc.issuer = TokenIssuer(stack_settings.auth)
    svc.response_cache = stack.layers["cache"].cache
    database = getattr(stack, "database", None)
    if database is not None:
        # FREIGHTSCALE_DATABASE__ENABLED: the stack owns the engines (and checks
        # them in /readyz); use its pools rather than opening a second set.
        svc.adopt_database(database)
    return stack
