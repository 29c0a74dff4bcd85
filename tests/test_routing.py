"""IndexedRouter returns exactly what Starlette's Router returns, for any table."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Host, Mount, Route, Router, WebSocketRoute
from starlette.websockets import WebSocket

from freightscale.routing import IndexedRouter, use_indexed_router

LITERALS = ["a", "b", "items", "users", "v1", "x-1"]
PARAMS = ["{s}", "{n:int}", "{f:float}", "{u:uuid}", "item-{k:int}", "{s}.json"]
METHODS = ["GET", "POST", "DELETE"]
SAMPLES = {
    "{s}": ["abc", "42", "x-1"],
    "{n:int}": ["7", "0042", "abc"],
    "{f:float}": ["1.5", "3", "x"],
    "{u:uuid}": ["123e4567-e89b-12d3-a456-426614174000", "nope"],
    "item-{k:int}": ["item-3", "item-", "items"],
    "{s}.json": ["doc.json", "doc.xml"],
}


def endpoint_for(label: str) -> Any:
    async def endpoint(request: Request) -> PlainTextResponse:
        params = ",".join(f"{k}={v!r}" for k, v in sorted(request.path_params.items()))
        return PlainTextResponse(f"{label}|{params}|{request.scope.get('root_path', '')}")

    return endpoint


segment = st.sampled_from(LITERALS) | st.sampled_from(PARAMS)
template = st.lists(segment, min_size=0, max_size=3).map(lambda parts: "/" + "/".join(parts))


def unique_params(path: str) -> bool:
    names = [p.split(":")[0].strip("{}") for p in path.split("/") if "{" in p]
    names = [n.split("{")[-1].split("}")[0] for n in names]
    return len(names) == len(set(names))


@st.composite
def route_tables(draw: st.DrawFn) -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    for i in range(draw(st.integers(1, 12))):
        path = draw(template.filter(unique_params))
        kind = draw(st.sampled_from(["route", "route", "route", "mount", "path", "host"]))
        label = f"r{i}"
        if kind == "route":
            methods = draw(st.lists(st.sampled_from(METHODS), min_size=1, max_size=2, unique=True))
            routes.append(Route(path, endpoint_for(label), methods=methods))
        elif kind == "path":
            routes.append(Route(path.rstrip("/") + "/{rest:path}", endpoint_for(label)))
        elif kind == "mount":
            inner = [
                Route(draw(template.filter(unique_params)), endpoint_for(f"{label}.{j}"))
                for j in range(draw(st.integers(1, 3)))
            ]
            mount_path = "" if path == "/" else path
            if "{" in mount_path and not unique_params(mount_path + "/x"):
                continue
            routes.append(Mount(mount_path, routes=inner))
        else:
            routes.append(Host("{sub}.example.org", app=Router([Route(path, endpoint_for(label))])))
    return routes


def sample_paths(routes: list[BaseRoute], draw: st.DrawFn) -> list[str]:
    paths = ["/", "", "/nope", "/items/", "/a/b/c/d"]
    for route in routes:
        source = getattr(route, "path", None)
        if source is None:
            continue
        if isinstance(route, Mount):
            source = source + "/" + draw(st.sampled_from([*LITERALS, "", "a/b"]))
        parts = []
        for part in source.split("/"):
            parts.append(draw(st.sampled_from(SAMPLES[part])) if part in SAMPLES else part)
        path = "/".join(parts).replace("{rest:path}", draw(st.sampled_from(["", "x", "x/y/"])))
        paths += [path, path + "/", path.rstrip("/") or "/"]
    return paths


async def call(app: Any, method: str, path: str, host: str) -> tuple[int, str, str]:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
        r = await client.request(method, path or "/")
    return r.status_code, r.headers.get("location", ""), r.text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_equivalent_to_starlette(data: st.DataObject) -> None:
    routes = data.draw(route_tables())
    paths = sample_paths(routes, data.draw)
    plain = Starlette(routes=list(routes))
    indexed = Starlette(routes=list(routes))
    use_indexed_router(indexed)
    host = data.draw(st.sampled_from(["testserver", "shop.example.org"]))

    async def compare() -> None:
        for path in paths:
            for method in ("GET", "POST"):
                expected = await call(plain, method, path, host)
                got = await call(indexed, method, path, host)
                assert got == expected, (method, path, host)

    asyncio.run(compare())


async def test_404_405_and_slash_redirect_like_starlette() -> None:
    routes = [
        Route("/shipments", endpoint_for("list"), methods=["GET"]),
        Route("/shipments/{id:int}", endpoint_for("detail"), methods=["GET", "PUT"]),
    ]
    app = Starlette(routes=routes)
    use_indexed_router(app)
    assert (await call(app, "GET", "/shipments/7", "t"))[2] == "detail|id=7|"
    assert (await call(app, "POST", "/shipments/7", "t"))[0] == 405
    assert (await call(app, "GET", "/shipments/x", "t"))[0] == 404
    status, location, _ = await call(app, "GET", "/shipments/", "t")
    assert status == 307
    assert location == "http://t/shipments"


async def test_routes_added_later_are_found() -> None:
    app = Starlette(routes=[Route("/a", endpoint_for("a"))])
    use_indexed_router(app)
    assert (await call(app, "GET", "/b", "t"))[0] == 404
    app.add_route("/b", endpoint_for("b"))
    assert (await call(app, "GET", "/b", "t"))[2].startswith("b|")


async def test_lifespan_and_websocket_routes_still_work() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("start")
        yield
        events.append("stop")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", ws)], lifespan=lifespan)
    use_indexed_router(app)

    async def run(scope: dict[str, Any], inbox: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    lifespan_out = await run(
        {"type": "lifespan", "asgi": {"version": "3.0"}},
        [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}],
    )
    assert [m["type"] for m in lifespan_out] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert events == ["start", "stop"]
    ws_scope = {
        "type": "websocket", "path": "/ws", "root_path": "", "query_string": b"",
        "headers": [], "scheme": "ws", "server": ("t", 80), "subprotocols": [],
    }  # fmt: skip
    ws_out = await run(ws_scope, [{"type": "websocket.connect"}])
    assert [m["type"] for m in ws_out] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert ws_out[1]["text"] == "hi"


def test_fastapi_router_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match="APIRouter"):
        use_indexed_router(FastAPI())


def test_index_prunes_candidates() -> None:
    routes = [Route(f"/r{i}/items/{{id:int}}", endpoint_for(str(i))) for i in range(500)]
    router = IndexedRouter(routes=routes)
    candidates = router._candidates("/r499/items/3")
    assert [c.path for c in candidates] == ["/r499/items/{id:int}"]  # type: ignore[attr-defined]


async def test_router_level_middleware_is_kept() -> None:
    from starlette.middleware import Middleware

    class Tag:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            async def tagged(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), (b"x-tag", b"1")]
                await send(message)

            await self.app(scope, receive, tagged)

    router = Router(routes=[Route("/a", endpoint_for("a"))], middleware=[Middleware(Tag)])
    indexed = use_indexed_router(router)
    assert indexed is router
    assert isinstance(router, IndexedRouter)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(router), base_url="http://t") as c:
        r = await c.get("/a")
    assert r.headers["x-tag"] == "1"
    assert r.text.startswith("a|")


async def test_dispatch_goes_through_the_index() -> None:
    app = Starlette(routes=[Route(f"/r{i}", endpoint_for(str(i))) for i in range(50)])
    router = use_indexed_router(app)
    assert (await call(app, "GET", "/r49", "t"))[2].startswith("49|")
    assert "/r49" in router._index.memo  # the request was dispatched by the index
