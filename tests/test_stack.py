"""build_stack: layer order, health placement, lifespan and shared resources."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import freightscale.stack.layers as stack_module
from freightscale.context import get_request_id
from freightscale.errors import PROBLEM_CONTENT_TYPE, problem_response
from freightscale.exceptions import PermissionDenied
from freightscale.settings import FreightScaleSettings
from freightscale.stack import Component, Resource, Stack, build_stack
from freightscale.stores import MemoryStore
from freightscale.stores.redis import RedisStore
from freightscale.types import ASGIApp, Receive, Scope, Send
from tests.helpers import LifespanDriver, free_port, http_scope, request, websocket_session


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://testserver")


def settings(**values: Any) -> FreightScaleSettings:
    values.setdefault("health", {"cache_ttl": 0})
    return FreightScaleSettings(**values)


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"request_id": get_request_id()})


async def crash(request: Request) -> JSONResponse:
    raise RuntimeError("kaput")


async def denied(request: Request) -> JSONResponse:
    raise PermissionDenied("not your tenant")


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/", hello), Route("/crash", crash), Route("/denied", denied)])


async def test_default_layers_and_order() -> None:
    app = build_stack(starlette_app(), settings())
    assert isinstance(app, Stack)
    assert app.components == ("telemetry", "health", "errors")
    async with client(app) as c:
        ok = await c.get("/", headers={"X-Request-ID": "s-1"})
        crashed = await c.get("/crash", headers={"X-Request-ID": "s-2"})
        forbidden = await c.get("/denied")
        live = await c.get("/healthz", headers={"X-Request-ID": "s-3"})
    assert ok.json() == {"request_id": "s-1"}
    # errors sits inside telemetry: the problem carries the id that the header returns.
    assert crashed.status_code == 500
    assert crashed.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert crashed.json()["request_id"] == "s-2"
    assert crashed.headers["x-request-id"] == "s-2"
    assert "kaput" not in crashed.text
    assert forbidden.status_code == 403
    assert forbidden.json()["detail"] == "not your tenant"
    # health is inside telemetry too.
    assert live.headers["x-request-id"] == "s-3"


async def test_everything_off() -> None:
    app = build_stack(
        starlette_app(), settings(telemetry={"enabled": False}, health={"enabled": False})
    )
    assert app.components == ("errors",)
    async with client(app) as c:
        ok = await c.get("/")
        live = await c.get("/healthz")
    assert "x-request-id" not in ok.headers
    assert live.status_code == 404  # the app's own 404: no health router


async def test_a_component_is_one_entry_and_health_stays_outside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class DenyAll:
        def __init__(self, app: ASGIApp, stack: Stack) -> None:
            self.app = app
            self.stack = stack

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            await problem_response(401)(scope, receive, send)

    extra = Component("deny", lambda s: s.debug, DenyAll)
    monkeypatch.setattr(stack_module, "COMPONENTS", (*stack_module.COMPONENTS, extra))
    app = build_stack(starlette_app(), settings(debug=True))
    assert app.components == ("telemetry", "health", "errors", "deny")
    async with client(app) as c:
        assert (await c.get("/")).status_code == 401
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 200
    off = build_stack(starlette_app(), settings(debug=False))
    assert "deny" not in off.components


async def test_decompression_is_one_setting_away() -> None:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"body": (await request.body()).decode()})

    inner = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    app = build_stack(inner, settings(decompression={"enabled": True}))
    assert app.components == ("telemetry", "health", "errors", "decompression")
    async with client(app) as c:
        response = await c.post(
            "/echo", content=gzip.compress(b"hello"), headers={"Content-Encoding": "gzip"}
        )
    assert response.json() == {"body": "hello"}
    assert "decompression" not in build_stack(inner, settings()).components


async def test_custom_health_paths_and_checks() -> None:
    async def fails() -> None:
        raise RuntimeError("dependency down")

    app = build_stack(
        starlette_app(),
        settings(health={"liveness_path": "/live", "readiness_path": "/ready", "cache_ttl": 0}),
        checks={"dep": fails},
    )
    async with client(app) as c:
        live = await c.get("/live")
        ready = await c.get("/ready")
    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["checks"]["dep:responseTime"][0]["status"] == "fail"


# ---- frameworks and scope types --------------------------------------------------


async def test_under_fastapi() -> None:
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        if item_id == 0:
            raise PermissionDenied("zero is private")
        return {"id": item_id, "request_id": get_request_id()}

    app = build_stack(api, settings())
    async with client(app) as c:
        ok = await c.get("/items/3", headers={"X-Request-ID": "f-1"})
        forbidden = await c.get("/items/0")
        invalid = await c.get("/items/x")
        ready = await c.get("/readyz")
    assert ok.json() == {"id": 3, "request_id": "f-1"}
    assert forbidden.status_code == 403
    assert forbidden.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert invalid.status_code == 422  # FastAPI's own validation stays untouched
    assert ready.status_code == 200


async def test_under_a_bare_asgi_callable() -> None:
    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        if scope["path"] == "/boom":
            raise ValueError("bare failure")
        await PlainTextResponse(get_request_id() or "")(scope, receive, send)

    app = build_stack(bare, settings())
    async with client(app) as c:
        ok = await c.get("/", headers={"X-Request-ID": "b-1"})
        boom = await c.get("/boom")
    assert ok.text == "b-1"
    assert boom.status_code == 500
    assert boom.headers["content-type"] == PROBLEM_CONTENT_TYPE


async def test_websocket_passes_through() -> None:
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"id": get_request_id()})
        await websocket.close()

    app = build_stack(Starlette(routes=[WebSocketRoute("/ws", ws)]), settings())
    sent = await websocket_session(app, "/ws", headers=[(b"x-request-id", b"w-1")])
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert json.loads(sent[1]["text"]) == {"id": "w-1"}


# ---- lifespan -------------------------------------------------------------------------


def lifespan_app(events: list[str], *, fail_startup: bool = False, fail_shutdown: bool = False):  # type: ignore[no-untyped-def]
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        events.append("app-startup")
        if fail_startup:
            raise RuntimeError("app cannot start")
        yield
        events.append("app-shutdown")
        if fail_shutdown:
            raise RuntimeError("app cannot stop")

    return Starlette(routes=[Route("/", hello)], lifespan=lifespan)


def counting_resource(events: list[str], *, fail: bool = False) -> Resource:
    async def open_(stack: Stack) -> str:
        events.append("open")
        await asyncio.sleep(0.01)
        if fail:
            raise RuntimeError("cannot open")
        return "handle"

    async def close(value: str) -> None:
        events.append(f"close:{value}")

    async def check() -> None:
        return None

    return Resource("thing", lambda s: True, open_, close, lambda value: check)


async def test_lifespan_opens_resources_around_the_apps_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    monkeypatch.setattr(stack_module, "RESOURCES", (counting_resource(events),))
    app = build_stack(lifespan_app(events), settings())
    state: dict[str, Any] = {}
    driver = LifespanDriver(app, state=state)
    assert await driver.startup() == {"type": "lifespan.startup.complete"}
    assert events == ["open", "app-startup"]
    assert app.started
    assert app.resources == {"thing": "handle"}
    assert state["freightscale"] is app
    assert app.health.check_names == ("thing",)
    assert await driver.shutdown() == {"type": "lifespan.shutdown.complete"}
    assert events == ["open", "app-startup", "app-shutdown", "close:handle"]
    assert not app.started
    assert app.resources == {}


async def test_app_startup_failure_is_reported_and_resources_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    monkeypatch.setattr(stack_module, "RESOURCES", (counting_resource(events),))
    app = build_stack(lifespan_app(events, fail_startup=True), settings())
    answer = await LifespanDriver(app).startup()
    assert answer["type"] == "lifespan.startup.failed"
    assert "app cannot start" in answer["message"]
    assert events == ["open", "app-startup", "close:handle"]


async def test_resource_failure_fails_startup_before_the_app_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    monkeypatch.setattr(stack_module, "RESOURCES", (counting_resource(events, fail=True),))
    answer = await LifespanDriver(build_stack(lifespan_app(events), settings())).startup()
    assert answer["type"] == "lifespan.startup.failed"
    assert "cannot open" in answer["message"]
    assert events == ["open"]


async def test_app_shutdown_failure_is_reported_and_resources_still_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    monkeypatch.setattr(stack_module, "RESOURCES", (counting_resource(events),))
    driver = LifespanDriver(build_stack(lifespan_app(events, fail_shutdown=True), settings()))
    assert (await driver.startup())["type"] == "lifespan.startup.complete"
    answer = await driver.shutdown()
    assert answer["type"] == "lifespan.shutdown.failed"
    assert "app cannot stop" in answer["message"]
    assert events[-1] == "close:handle"


@pytest.mark.parametrize("behaviour", ["raises", "returns"])
async def test_app_without_lifespan_support(
    monkeypatch: pytest.MonkeyPatch, behaviour: str
) -> None:
    events: list[str] = []
    monkeypatch.setattr(stack_module, "RESOURCES", (counting_resource(events),))

    async def http_only(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if behaviour == "raises":
                raise RuntimeError("http only")
            return
        await PlainTextResponse("ok")(scope, receive, send)

    app = build_stack(http_only, settings())
    driver = LifespanDriver(app)
    assert (await driver.startup())["type"] == "lifespan.startup.complete"
    assert (await driver.shutdown())["type"] == "lifespan.shutdown.complete"
    assert events == ["open", "close:handle"]


async def test_without_lifespan_resources_open_once_on_first_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    monkeypatch.setattr(stack_module, "RESOURCES", (counting_resource(events),))
    app = build_stack(starlette_app(), settings())
    assert not app.started
    responses = await asyncio.gather(*(request(app, http_scope("/")) for _ in range(10)))
    assert [r.status for r in responses] == [200] * 10
    assert events == ["open"]
    assert app.resources == {"thing": "handle"}
    await app.aclose()
    assert events == ["open", "close:handle"]


# ---- stores and Redis ------------------------------------------------------------------


async def test_memory_stores_without_redis() -> None:
    app = build_stack(starlette_app(), settings())
    await app.startup()
    sessions = app.store("sessions")
    assert isinstance(sessions, MemoryStore)
    assert app.store("sessions") is sessions
    assert app.store("cache") is not sessions
    assert app.redis is None
    await app.aclose()


async def test_with_the_real_redis(redis_url: str, redis_prefix: str) -> None:
    app = build_stack(
        starlette_app(), settings(redis={"url": redis_url, "key_prefix": redis_prefix})
    )
    driver = LifespanDriver(app)
    assert (await driver.startup())["type"] == "lifespan.startup.complete"
    assert app.redis is not None
    store = app.store("sessions")
    assert isinstance(store, RedisStore)
    await store.set("k", b"v", expires_in=30)
    assert await app.redis.get(f"{redis_prefix}:sessions:k") == b"v"
    async with client(app) as c:
        ready = await c.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["redis:responseTime"][0]["status"] == "pass"
    assert (await driver.shutdown())["type"] == "lifespan.shutdown.complete"
    assert app.redis is None
    assert "redis" not in app.health.check_names


async def test_unreachable_redis_does_not_hang_startup() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    app = build_stack(
        starlette_app(),
        settings(
            redis={"url": url, "connect_timeout": 0.5, "socket_timeout": 0.5, "retries": 0},
            health={"check_timeout": 1.0, "cache_ttl": 0},
        ),
    )
    driver = LifespanDriver(app)
    start = time.perf_counter()
    assert (await driver.startup(timeout=3))["type"] == "lifespan.startup.complete"
    assert time.perf_counter() - start < 1.5
    async with client(app) as c:
        live = await c.get("/healthz")
        start = time.perf_counter()
        ready = await c.get("/readyz")
        ready_time = time.perf_counter() - start
        page = await c.get("/")
    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready_time < 1.5
    (entry,) = ready.json()["checks"]["redis:responseTime"]
    assert entry["status"] == "fail"
    assert page.status_code == 200  # routes that do not need Redis keep working
    assert (await driver.shutdown())["type"] == "lifespan.shutdown.complete"


async def test_store_before_startup_is_a_clear_error(redis_url: str) -> None:
    app = build_stack(starlette_app(), settings(redis={"url": redis_url}))
    with pytest.raises(RuntimeError, match="opens at startup"):
        app.store("sessions")


async def test_scope_carries_the_stack() -> None:
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["freightscale"]["stack"])
        await PlainTextResponse("ok")(scope, receive, send)

    stack = build_stack(app, settings())
    await request(stack, http_scope())
    assert seen == [stack]
