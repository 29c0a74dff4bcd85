"""RBAC: wildcards, deny by default, Starlette and FastAPI guards, the permission
cache's promise (one loader call per TTL, zero Redis round trips when warm) and
per-tenant invalidation across instances."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis as sync_redis
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.auth import (
    Authenticator,
    AuthMiddleware,
    MemoryBus,
    PermissionCache,
    auth_exception_handler,
    has_permission,
    require_permission,
)
from freightscale.backends.redis import create_redis_client
from freightscale.context import Principal
from freightscale.exceptions import FreightScaleError
from freightscale.stores import MemoryStore
from tests.auth.conftest import bearer, hs_settings, hs_token, make_app
from tests.auth.test_verify import get
from tests.servers import RedisServer


@pytest.mark.parametrize(
    ("granted", "required", "allowed"),
    [
        ({"shipments:write"}, "shipments:write", True),
        ({"shipments:read"}, "shipments:write", False),
        ({"shipments:*"}, "shipments:write", True),
        ({"shipments:*"}, "shipments:notes:delete", True),
        ({"shipments:notes:*"}, "shipments:write", False),
        ({"*"}, "anything:at:all", True),
        ({"shipments"}, "shipments:write", False),
        ({"ship*"}, "shipments:write", False),
        (set(), "shipments:read", False),
    ],
)
def test_has_permission(granted: set[str], required: str, allowed: bool) -> None:
    assert has_permission(frozenset(granted), required) is allowed
    principal = Principal("u", permissions=frozenset(granted))
    assert principal.has_permission(required) is allowed


class Loader:
    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = table or {"dispatcher": ["shipments:*"], "viewer": ["shipments:read"]}
        self.calls = 0

    async def __call__(self, tenant_id: str | None, roles: frozenset[str]) -> list[str]:
        self.calls += 1
        await asyncio.sleep(0)
        return [p for role in sorted(roles) for p in self.table.get(role, [])]


async def post(app: Any, headers: dict[str, str], path: str = "/shipments") -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        return await client.post(path, headers=headers)


async def test_starlette_decorator_allows_denies_and_challenges() -> None:
    app = AuthMiddleware(make_app(), hs_settings(), permission_loader=Loader())
    assert (await post(app, bearer(hs_token(roles=["dispatcher"])))).status_code == 200
    denied = await post(app, bearer(hs_token(roles=["viewer"])))
    assert denied.status_code == 403
    assert denied.headers["content-type"] == "application/problem+json"
    assert "shipments:write" in denied.json()["detail"]
    anonymous = await post(app, {})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    # Permissions also appear as Starlette auth scopes, so requires() works for them.
    me = (await get(app, bearer(hs_token(roles=["viewer"])))).json()
    assert me["permissions"] == ["shipments:read"]
    assert "shipments:read" in me["auth_scopes"]


class _Shipments(HTTPEndpoint):
    @require_permission("shipments:write")
    async def post(self, request: Request) -> JSONResponse:
        return JSONResponse({"method": True})


@require_permission("shipments:write")
async def _write_one(request: Request) -> JSONResponse:
    return JSONResponse({"one": True})


@require_permission("shipments:write")
def _sync_write(request: Request) -> JSONResponse:  # run in the thread pool
    return JSONResponse({"sync": True})


@require_permission("shipments:write")
async def _keyword_write(request: Request, note: str = "") -> JSONResponse:
    return JSONResponse({"keyword": note})


@pytest.mark.parametrize(
    ("path", "body"),
    [("/method", {"method": True}), ("/sync", {"sync": True}), ("/keyword", {"keyword": ""})],
)
async def test_decorator_guards_methods_sync_and_extra_parameter_endpoints(
    path: str, body: dict[str, Any]
) -> None:
    inner = Starlette(
        routes=[
            Route("/method", _Shipments),
            Route("/sync", _sync_write, methods=["POST"]),
            Route("/keyword", _keyword_write, methods=["POST"]),
        ]
    )
    app = AuthMiddleware(inner, hs_settings(), permission_loader=Loader())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        allowed = await client.post(path, headers=bearer(hs_token(roles=["dispatcher"])))
        denied = await client.post(path, headers=bearer(hs_token(roles=["viewer"])))
        anonymous = await client.post(path)
    assert (allowed.status_code, allowed.json()) == (200, body)
    assert denied.status_code == 403
    assert "shipments:write" in denied.json()["detail"]
    assert anonymous.status_code == 401


@pytest.mark.parametrize("endpoint", [_Shipments.post, _keyword_write, _write_one])
async def test_decorated_endpoint_without_a_request_is_a_type_error(endpoint: Any) -> None:
    with pytest.raises(TypeError, match="received no request"):
        await endpoint("not a request")


async def test_without_loader_everything_is_denied() -> None:
    app = AuthMiddleware(make_app(), hs_settings())
    assert (await post(app, bearer(hs_token(roles=["dispatcher"])))).status_code == 403


def fastapi_app(with_handler: bool) -> FastAPI:
    api = FastAPI()
    if with_handler:
        api.add_exception_handler(FreightScaleError, auth_exception_handler)

    @api.post("/shipments")
    async def create(
        principal: Principal = Depends(require_permission("shipments:write")),  # noqa: B008
    ) -> dict[str, Any]:
        return {"by": principal.user_id}

    return api


@pytest.mark.parametrize("with_handler", [False, True])
async def test_fastapi_dependency(with_handler: bool) -> None:
    app = AuthMiddleware(fastapi_app(with_handler), hs_settings(), permission_loader=Loader())
    ok = await post(app, bearer(hs_token(roles=["dispatcher"])))
    assert ok.status_code == 200
    assert ok.json() == {"by": "user-1"}
    denied = await post(app, bearer(hs_token(roles=["viewer"])))
    assert denied.status_code == 403
    anonymous = await post(app, {})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    if with_handler:
        assert denied.headers["content-type"] == "application/problem+json"
        assert denied.json()["detail"] == "missing permission 'shipments:write'"


async def test_thousand_requests_one_loader_call() -> None:
    loader = Loader()
    auth = Authenticator(hs_settings(permission_ttl=60), permission_loader=loader)
    app = AuthMiddleware(make_app(), authenticator=auth)
    token = hs_token(roles=["dispatcher"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        for _ in range(1000):
            response = await client.post("/shipments", headers=bearer(token))
            assert response.status_code == 200
    assert loader.calls == 1
    assert auth.permissions is not None
    assert auth.permissions.loads == 1


async def test_concurrent_misses_share_one_load() -> None:
    loader = Loader()
    cache = PermissionCache(loader, MemoryStore(), MemoryBus())
    results = await asyncio.gather(*(cache.get("acme", frozenset({"viewer"})) for _ in range(50)))
    assert all(r == frozenset({"shipments:read"}) for r in results)
    assert loader.calls == 1


async def test_one_loader_call_per_ttl_with_a_clock() -> None:
    now = [0.0]
    loader = Loader()
    store = MemoryStore(clock=lambda: now[0])
    cache = PermissionCache(loader, store, MemoryBus(), ttl=10, clock=lambda: now[0])
    roles = frozenset({"viewer"})
    for step in range(300):  # 30 simulated seconds, a lookup every 0.1 s
        now[0] = step * 0.1
        assert await cache.get("acme", roles) == frozenset({"shipments:read"})
    assert loader.calls == 3


@pytest.fixture
async def two_clients(redis_url: str) -> AsyncIterator[list[Any]]:
    clients = [create_redis_client(redis_url), create_redis_client(redis_url)]
    yield clients
    for client in clients:
        await client.aclose()


async def test_version_bump_reaches_every_instance(
    two_clients: list[Any], redis_prefix: str
) -> None:
    table = {"clerk": ["shipments:read"]}
    settings = hs_settings(key_prefix=redis_prefix, revocation_sync_interval=60)
    a = Authenticator(settings, redis=two_clients[0], permission_loader=Loader(table))
    b = Authenticator(settings, redis=two_clients[1], permission_loader=Loader(table))
    app_a = AuthMiddleware(make_app(), authenticator=a)
    app_b = AuthMiddleware(make_app(), authenticator=b)
    token = hs_token(roles=["clerk"])
    try:
        for app in (app_a, app_b):
            assert (await post(app, bearer(token))).status_code == 403
        await asyncio.sleep(0.1)  # B's subscription is up
        table["clerk"] = ["shipments:read", "shipments:write"]  # the app changes the grants
        assert a.permissions is not None
        await a.permissions.bump("acme")
        assert (await post(app_a, bearer(token))).status_code == 200
        for _ in range(200):
            if (await post(app_b, bearer(token))).status_code == 200:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("instance B kept the old permissions")
        # Another tenant's cache was not touched.
        other = hs_token(roles=["clerk"], tenant="globex")
        assert (await post(app_b, bearer(other))).status_code == 200  # loaded fresh
    finally:
        await a.aclose()
        await b.aclose()


def _commandstats(client: sync_redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


async def test_warm_hot_path_makes_zero_redis_round_trips(redis_server: RedisServer) -> None:
    """The seed's promise, on a private Redis so its INFO counts only this test."""
    client = create_redis_client(redis_server.url, health_check_interval=0)
    loader = Loader()
    settings = hs_settings(key_prefix="hot", revocation_sync_interval=300)
    auth = Authenticator(settings, redis=client, permission_loader=loader)
    app = AuthMiddleware(make_app(), authenticator=auth)
    token = hs_token(roles=["dispatcher"])
    observer = sync_redis.Redis(port=redis_server.port, socket_timeout=5)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as http:
            for _ in range(3):  # warm: verify, revocation check, permission load
                assert (await http.post("/shipments", headers=bearer(token))).status_code == 200
            await asyncio.sleep(0.2)  # the pub/sub listener has subscribed and caught up
            before = _commandstats(observer)
            assert before.get("cmdstat_get", 0) > 0  # the cold path did use Redis
            for _ in range(1000):
                assert (await http.post("/shipments", headers=bearer(token))).status_code == 200
            after = _commandstats(observer)
        delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        assert delta == {"cmdstat_info": 1}, delta  # only our own INFO call
        assert loader.calls == 1
    finally:
        observer.close()
        await auth.aclose()
        await client.aclose()


async def test_tenant_none_and_tenant_dash_do_not_share_permissions() -> None:
    calls: list[str | None] = []

    async def loader(tenant_id: str | None, roles: frozenset[str]) -> list[str]:
        calls.append(tenant_id)
        return ["admin:*"] if tenant_id is None else []

    store = MemoryStore()
    first = PermissionCache(loader, store, MemoryBus())
    assert await first.get(None, frozenset({"r"})) == frozenset({"admin:*"})
    second = PermissionCache(loader, store, MemoryBus())  # another instance, same store
    assert await second.get("-", frozenset({"r"})) == frozenset()
    assert calls == [None, "-"]


@pytest.mark.parametrize("failure", ["raises", "hangs"])
async def test_failing_or_slow_permission_loader_is_a_503_not_a_500(failure: str) -> None:
    async def loader(tenant_id: str | None, roles: frozenset[str]) -> list[str]:
        if failure == "raises":
            raise ConnectionRefusedError("the roles database is down")
        await asyncio.sleep(30)
        return []

    settings = hs_settings(permission_loader_timeout=0.2)
    app = AuthMiddleware(make_app(), settings, permission_loader=loader)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        started = asyncio.get_running_loop().time()
        response = await client.post("/shipments", headers=bearer(hs_token(roles=["dispatcher"])))
        elapsed = asyncio.get_running_loop().time() - started
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert elapsed < 5
    await app.aclose()
