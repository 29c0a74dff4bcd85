"""build_stack with sessions, the response cache and compression together, on memory and Redis."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.sessions import load_session
from freightscale.settings import FreightScaleSettings
from freightscale.stack import build_stack
from tests.helpers import LifespanDriver

CALLS = {"report": 0}


async def report(request: Request) -> JSONResponse:
    CALLS["report"] += 1
    return JSONResponse({"rows": [{"id": i, "status": "delivered"} for i in range(200)]})


async def visit(request: Request) -> JSONResponse:
    session = await load_session(request)
    session["visits"] = session.get("visits", 0) + 1
    return JSONResponse({"visits": session["visits"]})


def make_settings(redis: tuple[str, str] | None) -> FreightScaleSettings:
    values: dict[str, Any] = {
        "environment": "development",
        "health": {"cache_ttl": 0},
        "sessions": {"enabled": True, "secret_keys": ["s" * 40], "secure": False},
        "cache": {"enabled": True, "rules": [{"path": "/report", "ttl": 60}]},
        "compression": {"enabled": True, "minimum_size": 100},
    }
    if redis:
        values["redis"] = {"url": redis[0], "key_prefix": redis[1]}
    return FreightScaleSettings(**values)


@pytest.fixture(params=["memory", "redis"])
def redis(request: pytest.FixtureRequest) -> tuple[str, str] | None:
    if request.param == "memory":
        return None
    return request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")


async def test_sessions_cache_and_compression_compose(redis: tuple[str, str] | None) -> None:
    settings = make_settings(redis)
    app = Starlette(routes=[Route("/report", report), Route("/visit", visit)])
    stack = build_stack(app, settings)
    assert stack.components[-3:] == ("cache", "compression", "sessions")
    driver = LifespanDriver(stack)
    assert (await driver.startup())["type"] == "lifespan.startup.complete"
    CALLS["report"] = 0
    try:
        transport = httpx.ASGITransport(stack)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            headers = {"Accept-Encoding": "br"}
            first = await client.get("/report", headers=headers)
            second = await client.get("/report", headers=headers)
            one = await client.get("/visit")
            two = await client.get("/visit")
        assert first.headers["content-encoding"] == "br"
        assert first.headers["x-cache"] == "MISS"
        assert second.headers["x-cache"] == "HIT"
        # httpx decodes br itself: both bodies are the same JSON document.
        assert second.content == first.content
        assert len(first.json()["rows"]) == 200
        assert CALLS["report"] == 1  # the hit ran no handler and no compression
        assert one.json() == {"visits": 1}
        assert two.json() == {"visits": 2}  # the cookie from the first visit was honoured
    finally:
        assert (await driver.shutdown())["type"] == "lifespan.shutdown.complete"


async def test_auth_layer_from_settings_with_permission_loader(
    redis_url: str, redis_prefix: str
) -> None:
    from freightscale.auth import TokenIssuer, require_permission

    secret = "k" * 48
    loads: list[tuple[str, frozenset[str]]] = []

    async def loader(tenant_id: str, roles: frozenset[str]) -> set[str]:
        loads.append((tenant_id, roles))
        return {"shipments:*"} if "dispatcher" in roles else {"shipments:read"}

    @require_permission("shipments:write")
    async def create(request: Request) -> JSONResponse:
        return JSONResponse({"tenant": request.user.tenant_id}, status_code=201)

    settings = FreightScaleSettings(
        redis={"url": redis_url, "key_prefix": redis_prefix},
        auth={"enabled": True, "secret": secret, "key_prefix": redis_prefix},
        health={"cache_ttl": 0},
    )
    app = Starlette(routes=[Route("/shipments", create, methods=["POST"])])
    stack = build_stack(app, settings, permission_loader=loader)
    assert "auth" in stack.components
    issuer = TokenIssuer(settings.auth)
    dispatcher = issuer.issue("u1", tenant="acme", roles=["dispatcher"])
    viewer = issuer.issue("u2", tenant="acme", roles=["viewer"])
    driver = LifespanDriver(stack)
    assert (await driver.startup())["type"] == "lifespan.startup.complete"
    try:
        transport = httpx.ASGITransport(stack)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            ok = await client.post("/shipments", headers={"Authorization": f"Bearer {dispatcher}"})
            no = await client.post("/shipments", headers={"Authorization": f"Bearer {viewer}"})
            bad = await client.post("/shipments", headers={"Authorization": "Bearer x.y.z"})
        assert ok.status_code == 201
        assert ok.json() == {"tenant": "acme"}
        assert no.status_code == 403
        assert bad.status_code == 401
        assert bad.headers["content-type"] == "application/problem+json"
        assert {tenant for tenant, _ in loads} == {"acme"}
    finally:
        assert (await driver.shutdown())["type"] == "lifespan.shutdown.complete"
