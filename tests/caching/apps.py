"""Tiny apps for the cache tests, and the app the uvicorn subprocesses serve."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from freightscale.caching import ResponseCacheMiddleware, add_cache_tags
from freightscale.context import Principal, bind_principal, get_principal
from freightscale.settings.cache import CacheRule, CacheSettings
from freightscale.types import ASGIApp, Receive, Scope, Send


class Counter:
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.fail = False
        self.status = 200
        self.delay = 0.0
        self.version = 1

    def hit(self, name: str) -> int:
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name]


def who(request: Request) -> dict[str, Any]:
    p = get_principal(request.scope)
    return {
        "user": p.user_id if p else None,
        "tenant": p.tenant_id if p else None,
        "roles": sorted(p.roles) if p else None,
        "permissions": sorted(p.permissions) if p else None,
    }


def make_app(counter: Counter) -> Starlette:
    async def shipments(request: Request) -> Response:
        counter.hit("shipments")
        if counter.delay:
            await asyncio.sleep(counter.delay)
        if counter.fail:
            raise RuntimeError("database is down")
        return JSONResponse(
            {"v": counter.version, **who(request), "fwd": request.headers.get("x-forwarded-host")},
            status_code=counter.status,
            headers={"cache-tag": "shipments, list"},
        )

    async def shipment(request: Request) -> Response:
        counter.hit("shipment")
        add_cache_tags(request.scope, f"shipment:{request.path_params['id']}")
        return JSONResponse({"id": request.path_params["id"], "v": counter.version, **who(request)})

    async def update(request: Request) -> Response:
        counter.version += 1
        return JSONResponse({"ok": True})

    async def me(request: Request) -> Response:
        counter.hit("me")
        return JSONResponse(who(request), headers={"cache-control": "private, max-age=60"})

    async def tenant_data(request: Request) -> Response:
        counter.hit("tenant")
        return JSONResponse(who(request))

    async def cookie(request: Request) -> Response:
        counter.hit("cookie")
        r = JSONResponse({"x": 1})
        r.set_cookie("a", "b")
        return r

    async def nostore(request: Request) -> Response:
        counter.hit("nostore")
        return JSONResponse({"x": 1}, headers={"cache-control": "no-store"})

    async def big(request: Request) -> Response:
        counter.hit("big")

        async def gen():  # type: ignore[no-untyped-def]
            for _ in range(10):
                yield b"x" * 1000

        return StreamingResponse(gen(), media_type="text/plain")

    async def varies(request: Request) -> Response:
        counter.hit("varies")
        return JSONResponse({"x": 1}, headers={"vary": "X-Custom"})

    return Starlette(
        routes=[
            Route("/shipments", shipments),
            Route("/shipments/{id}", shipment),
            Route("/shipments/{id}", update, methods=["POST"]),
            Route("/me", me),
            Route("/tenant", tenant_data),
            Route("/role", tenant_data),
            Route("/cookie", cookie),
            Route("/nostore", nostore),
            Route("/big", big),
            Route("/varies", varies),
        ]
    )


RULES = (
    CacheRule(path="/shipments", ttl=60, stale_while_revalidate=30, stale_if_error=300,
              tags=("shipments",)),
    CacheRule(path="/shipments/{id}", scope="tenant", tags=("shipment:{id}", "tenant:{tenant}"),
              invalidate_on_write=True),
    CacheRule(path="/me", scope="user"),
    CacheRule(path="/tenant", scope="tenant"),
    CacheRule(path="/role", scope="role"),
    CacheRule(path="/cookie"),
    CacheRule(path="/nostore"),
    CacheRule(path="/big"),
    CacheRule(path="/varies"),
)  # fmt: skip


class FakeAuth:
    """Binds a Principal from ``Authorization: Bearer user@tenant[/role,role[/perm,perm]]``.

    A test stand-in for freightscale.auth.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = None
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"authorization" and value.startswith(b"Bearer "):
                    user, _, rest = value[7:].decode().partition("@")
                    tenant, _, rest = rest.partition("/")
                    roles, _, perms = rest.partition("/")
                    principal = Principal(
                        user_id=user,
                        tenant_id=tenant or None,
                        roles=frozenset(filter(None, roles.split(","))),
                        permissions=frozenset(filter(None, perms.split(","))),
                    )
        with bind_principal(principal, scope):
            await self.app(scope, receive, send)


def build(
    counter: Counter, settings: CacheSettings, **kwargs: Any
) -> tuple[ASGIApp, ResponseCacheMiddleware]:
    cache = ResponseCacheMiddleware(make_app(counter), settings, **kwargs)
    return FakeAuth(cache), cache


# -- the app uvicorn subprocesses serve (cross-process tests) -------------------


def _process_app() -> ASGIApp:
    import redis.asyncio as aioredis

    from freightscale.stores.redis import RedisStore

    url = os.environ["CACHE_TEST_REDIS_URL"]
    prefix = os.environ["CACHE_TEST_PREFIX"]
    counter_client = aioredis.Redis.from_url(url)

    async def slow(request: Request) -> Response:
        await counter_client.incr(f"{prefix}:handler-runs")
        await asyncio.sleep(0.5)
        return JSONResponse({"pid": os.getpid()})

    async def item(request: Request) -> Response:
        return JSONResponse(
            {"pid": os.getpid(), "v": int(await counter_client.incr(f"{prefix}:v"))}
        )

    async def write(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/slow", slow), Route("/items/{id}", item),
                Route("/items/{id}", write, methods=["POST"])]
    )  # fmt: skip
    items = CacheRule(path="/items/{id}", ttl=60, tags=("item:{id}",), invalidate_on_write=True)
    settings = CacheSettings(rules=(CacheRule(path="/slow", ttl=60), items), lock_wait=5.0)
    return ResponseCacheMiddleware(app, settings, store=RedisStore.from_url(url, key_prefix=prefix))


if "CACHE_TEST_REDIS_URL" in os.environ:
    process_app = _process_app()
