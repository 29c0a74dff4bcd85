"""RateLimitMiddleware through ASGI, over the memory and the Redis backend."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.ratelimit import Rule
from freightscale.settings.ratelimit import RateLimitSettings, RouteLimit
from tests.ratelimit.conftest import client_for, hello, with_principal


def settings(prefix: str, **kw: object) -> RateLimitSettings:
    kw.setdefault("key", "ip")
    kw.setdefault("timeout", 2.0)  # behaviour tests: a loaded machine must not trigger fail-over
    return RateLimitSettings(key_prefix=prefix, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
async def test_limit_then_429_problem_json(make_limiter, backend, prefix, strategy) -> None:
    mw = make_limiter(settings(prefix, default="3/minute", strategy=strategy), redis=backend)
    async with client_for(mw) as client:
        codes = [(await client.get("/x")).status_code for _ in range(3)]
        refused = await client.get("/x")
    assert codes == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert body["status"] == 429
    assert "default" in body["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-policy"] == '"default";q=3;w=60'
    assert refused.headers["ratelimit"].startswith('"default";r=0;t=')


async def test_headers_count_down(make_limiter, backend, prefix) -> None:
    mw = make_limiter(settings(prefix, default="5/minute"), redis=backend)
    async with client_for(mw) as client:
        first = await client.get("/")
        second = await client.get("/")
    assert first.status_code == 200
    assert first.json() == {"ok": True}
    assert first.headers["ratelimit-policy"] == '"default";q=5;w=60'
    assert first.headers["ratelimit"] == '"default";r=4;t=60'
    assert second.headers["ratelimit"].startswith('"default";r=3;t=')


async def test_several_limits_per_rule(make_limiter, backend, prefix) -> None:
    mw = make_limiter(
        settings(prefix, default="2/second; 3/hour", headers=("draft", "legacy", "x")),
        redis=backend,
    )
    async with client_for(mw) as client:
        r1 = await client.get("/")
        statuses = [r1.status_code] + [(await client.get("/")).status_code for _ in range(3)]
    assert r1.headers["ratelimit-policy"] == '"default-1s";q=2;w=1, "default-3600s";q=3;w=3600'
    assert r1.headers["ratelimit"].startswith('"default-1s";r=1;t=')
    assert '"default-3600s";r=2;t=' in r1.headers["ratelimit"]
    # legacy and X- sets describe the tightest limit
    assert r1.headers["ratelimit-limit"] == "2"
    assert r1.headers["ratelimit-remaining"] == "1"
    assert r1.headers["x-ratelimit-remaining"] == "1"
    assert statuses[:2] == [200, 200]
    assert statuses[2] == 429


async def test_cost_consumes_several_units(make_limiter, backend, prefix) -> None:
    cfg = settings(
        prefix,
        default="100/minute",
        routes=(RouteLimit(path="/export", limits="10/minute", cost=4),),
    )
    mw = make_limiter(cfg, redis=backend)
    async with client_for(mw) as client:
        codes = [(await client.post("/export")).status_code for _ in range(3)]
        other = await client.get("/other")
    assert codes == [200, 200, 429]
    assert other.status_code == 200
    assert other.headers["ratelimit"].startswith('"default";r=99')


async def test_route_rules_methods_and_exemptions(make_limiter, backend, prefix) -> None:
    cfg = settings(
        prefix,
        default="",
        routes=(
            RouteLimit(path="/login", methods=("post",), limits="1/minute", name="login"),
            RouteLimit(path="/shipments/{id}/docs", limits="1/minute"),
        ),
        exempt_paths=("/health",),
    )
    mw = make_limiter(cfg, redis=backend)
    async with client_for(mw) as client:
        assert (await client.post("/login")).status_code == 200
        assert (await client.post("/login")).status_code == 429
        get = await client.get("/login")  # GET is not covered by the rule
        assert get.status_code == 200
        assert "ratelimit" not in get.headers
        assert (await client.get("/shipments/7/docs")).status_code == 200
        limited = await client.get("/shipments/8/docs")  # same rule, same key
        assert limited.status_code == 429
        assert '"shipments_id_docs"' in limited.headers["ratelimit-policy"]
        for _ in range(3):
            health = await client.get("/health")
            assert health.status_code == 200
            assert "ratelimit" not in health.headers


async def test_shadow_mode_reports_but_never_blocks(make_limiter, backend, prefix, caplog) -> None:
    mw = make_limiter(settings(prefix, default="2/minute", shadow=True), redis=backend)
    caplog.set_level(logging.INFO, logger="freightscale.ratelimit")
    async with client_for(mw) as client:
        responses = [await client.get("/") for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert responses[-1].headers["ratelimit"].startswith('"default";r=0;')
    shadow_lines = [r for r in caplog.records if "shadow rate limit" in r.getMessage()]
    assert len(shadow_lines) == 1  # throttled, not one line per request


async def test_keys_separate_clients(make_limiter, backend, prefix) -> None:
    mw = make_limiter(settings(prefix, default="1/minute"), redis=backend)
    async with client_for(mw, "198.51.100.1") as a, client_for(mw, "198.51.100.2") as b:
        assert (await a.get("/")).status_code == 200
        assert (await a.get("/")).status_code == 429
        assert (await b.get("/")).status_code == 200


async def test_user_and_tenant_keys(make_limiter, backend, prefix) -> None:
    by_user = make_limiter(settings(prefix, default="1/minute", key="user"), redis=backend)
    by_tenant = make_limiter(
        settings(prefix + "t", default="1/minute", key="tenant"), redis=backend
    )
    async with client_for(with_principal(by_user)) as user_client:
        h = {"x-user": "alice", "x-tenant": "acme"}
        assert (await user_client.get("/", headers=h)).status_code == 200
        assert (await user_client.get("/", headers=h)).status_code == 429
        other = {"x-user": "bob", "x-tenant": "acme"}
        assert (await user_client.get("/", headers=other)).status_code == 200
        # anonymous falls back to the IP
        assert (await user_client.get("/")).status_code == 200
        assert (await user_client.get("/")).status_code == 429
    async with client_for(with_principal(by_tenant)) as tenant_client:
        assert (
            await tenant_client.get("/", headers={"x-user": "a", "x-tenant": "acme"})
        ).status_code == 200
        same_tenant = await tenant_client.get("/", headers={"x-user": "b", "x-tenant": "acme"})
        assert same_tenant.status_code == 429
        other_tenant = await tenant_client.get("/", headers={"x-user": "c", "x-tenant": "glob"})
        assert other_tenant.status_code == 200


async def test_api_key_and_custom_key(make_limiter, backend, prefix) -> None:
    mw = make_limiter(settings(prefix, default="1/minute", key="api_key"), redis=backend)
    async with client_for(mw) as client:
        assert (await client.get("/", headers={"x-api-key": "k1"})).status_code == 200
        assert (await client.get("/", headers={"x-api-key": "k1"})).status_code == 429
        assert (await client.get("/", headers={"x-api-key": "k2"})).status_code == 200

    def by_header(scope):
        for name, value in scope["headers"]:
            if name == b"x-team":
                return value.decode("latin-1")
        return None  # no team: the rule does not apply

    rule = Rule.create("team", "1/minute", key=by_header)
    custom = make_limiter(settings(prefix + "c"), rules=[rule], redis=backend)
    async with client_for(custom) as client:
        assert (await client.get("/", headers={"x-team": "{red}"})).status_code == 200
        assert (await client.get("/", headers={"x-team": "{red}"})).status_code == 429
        assert (await client.get("/", headers={"x-team": "x" * 10_000})).status_code == 200
        for _ in range(3):
            assert (await client.get("/")).status_code == 200


async def test_tenant_plans_from_loader_are_cached(make_limiter, backend, prefix) -> None:
    calls: list[str] = []

    async def plans(tenant: str) -> str | None:
        calls.append(tenant)
        return {"gold": "3/minute", "free": "1/minute"}.get(tenant)

    mw = make_limiter(
        settings(prefix, default="2/minute", key="tenant"), redis=backend, plan_loader=plans
    )
    async with client_for(with_principal(mw)) as client:

        async def run(tenant: str, n: int) -> list[int]:
            h = {"x-user": "u", "x-tenant": tenant}
            return [(await client.get("/", headers=h)).status_code for _ in range(n)]

        assert await run("gold", 4) == [200, 200, 200, 429]
        assert await run("free", 2) == [200, 429]
        assert await run("other", 3) == [200, 200, 429]  # no plan: the rule's own limits
    assert sorted(calls) == ["free", "gold", "other"]


async def test_passes_websocket_and_lifespan_untouched(make_limiter, prefix) -> None:
    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    mw = make_limiter(settings(prefix, default="1/minute"), app=app)
    await mw({"type": "lifespan"}, None, None)
    await mw({"type": "websocket", "path": "/ws", "headers": []}, None, None)
    assert seen == ["lifespan", "websocket"]


async def test_works_under_starlette_and_fastapi(make_limiter, prefix) -> None:
    async def home(request):
        return JSONResponse({"ok": True})

    star = Starlette(routes=[Route("/", home)])
    fast = FastAPI()

    @fast.get("/")
    async def fast_home() -> dict[str, bool]:
        return {"ok": True}

    for name, app in (("star", star), ("fast", fast), ("bare", hello)):
        mw = make_limiter(settings(prefix + name, default="1/minute"), app=app)
        async with client_for(mw) as client:
            ok = await client.get("/")
            refused = await client.get("/")
        assert ok.status_code == 200
        assert ok.json() == {"ok": True}
        assert ok.headers["ratelimit-policy"] == '"default";q=1;w=60'
        assert refused.status_code == 429
        assert json.loads(refused.content)["title"] == "Too Many Requests"


async def test_broken_plan_loader_falls_back_to_rule_limits(make_limiter, prefix, caplog) -> None:
    async def broken(tenant: str) -> str:
        if tenant == "slow":
            import asyncio

            await asyncio.sleep(5)
        return "not a limit"

    mw = make_limiter(
        settings(prefix, default="1/minute", key="tenant", plan_timeout=0.05), plan_loader=broken
    )
    async with client_for(with_principal(mw)) as client:
        for tenant in ("acme", "slow"):
            h = {"x-user": "u", "x-tenant": tenant}
            assert (await client.get("/", headers=h)).status_code == 200
            assert (await client.get("/", headers=h)).status_code == 429
    assert any("plan loader failed" in r.getMessage() for r in caplog.records)


async def test_two_layers_combine_draft_items_without_duplicating_legacy(make_limiter) -> None:
    cfg = RateLimitSettings(
        default="5/minute", key="user", ip_limits="10/minute", headers=("draft", "legacy")
    )
    inner = make_limiter(cfg, app=hello)
    outer = make_limiter(cfg, app=with_principal(inner), layer="ip")
    async with client_for(outer) as client:
        response = await client.get("/", headers={"x-user": "alice"})
    assert response.status_code == 200
    policies = response.headers.get_list("ratelimit-policy")
    assert policies == ['"default";q=5;w=60', '"ip";q=10;w=60']
    assert response.headers.get_list("ratelimit-limit") == ["5"]  # the inner layer's only


async def test_rule_decisions_are_cached_per_path_and_bounded(make_limiter, prefix) -> None:
    from freightscale.ratelimit.middleware import _MAX_ROUTES

    cfg = settings(
        prefix,
        default="100/minute",
        routes=(RouteLimit(path="/login", methods=("post",), limits="1/minute", name="login"),),
        exempt_paths=("/health",),
    )
    mw = make_limiter(cfg)
    for n in range(_MAX_ROUTES + 50):  # ids in paths: the cache never grows past its bound
        route = mw._route(f"/shipments/{n}", "GET")
        assert route is not None
        assert route.rule.name == "default"
        assert len(mw._routes) <= _MAX_ROUTES
    async with client_for(mw) as client:
        assert (await client.post("/login")).status_code == 200
        assert (await client.post("/login")).status_code == 429  # cached: still the login rule
        assert (await client.get("/login")).headers["ratelimit"].startswith('"default";')
        assert "ratelimit" not in (await client.get("/health")).headers
