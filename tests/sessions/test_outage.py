"""Redis outages, lazy loading proven by Redis' own command counts, and start-up cost.

Each test runs its own redis-server (``redis_server`` fixture or a private
one), so stopping it or reading INFO commandstats disturbs nobody.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis

from freightscale.backends.redis import create_redis_client
from freightscale.errors import PROBLEM_CONTENT_TYPE
from freightscale.sessions import SessionMiddleware
from freightscale.sessions.backends import encode_record
from freightscale.sessions.redis import RedisSessionBackend
from freightscale.settings import RedisSettings
from tests.helpers import counted
from tests.servers import RedisServer
from tests.sessions.apps import starlette_app
from tests.sessions.conftest import settings


@pytest.fixture
def durable_redis(redis_url: str) -> Iterator[RedisServer]:
    """A private redis-server that keeps its data across a kill and restart (AOF, fsync always)."""
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    yield server
    server.cleanup()


def make_app(url: str, **overrides: Any) -> SessionMiddleware:
    redis_settings = RedisSettings(
        url=url,  # type: ignore[arg-type]
        retries=1,
        connect_timeout=0.5,
        socket_timeout=0.5,
    )
    backend = RedisSessionBackend(create_redis_client(redis_settings), owns_client=True)
    app = SessionMiddleware(starlette_app(), settings(timeout=1.0, **overrides), backend=backend)
    app._owns_backend = True  # the test's backend: close it with the app
    return app


@pytest.fixture
async def closing() -> AsyncIterator[list[SessionMiddleware]]:
    apps: list[SessionMiddleware] = []
    yield apps
    for app in apps:
        await app.aclose()


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")


def outage_logs(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    messages = [r.getMessage() for r in caplog.records if r.name == "freightscale.sessions"]
    return (
        sum("session store unavailable" in m for m in messages),
        sum("session store recovered" in m for m in messages),
    )


async def test_fail_open_gives_anonymous_session_and_recovers(
    durable_redis: RedisServer, closing: list[SessionMiddleware], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(durable_redis.url, fail_mode="open")
    closing.append(app)
    caplog.set_level(logging.INFO, "freightscale.sessions")
    async with client(app) as c:
        await c.get("/set?user=alice")
        durable_redis.stop()
        for _ in range(3):
            response = await c.get("/get")
            assert response.status_code == 200
            assert response.json()["data"] == {}
            # The cookie is left alone, so the real session comes back with Redis.
            assert response.headers.get_list("set-cookie") == []
        assert (await c.get("/set?cart=1")).status_code == 200  # write dropped, no error
        assert (await c.get("/plain")).status_code == 200
        assert outage_logs(caplog) == (1, 0)
        durable_redis.start()
        response = await c.get("/get")
        assert response.status_code == 200
        assert response.json()["data"] == {"user": "alice"}
    assert outage_logs(caplog) == (1, 1)


async def test_fail_closed_answers_503_only_where_the_session_is_needed(
    durable_redis: RedisServer, closing: list[SessionMiddleware], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(durable_redis.url, fail_mode="closed", eager_paths=["/account"])
    closing.append(app)
    caplog.set_level(logging.INFO, "freightscale.sessions")
    async with client(app) as c:
        await c.get("/set?user=alice")
        durable_redis.stop()
        for path in ("/get", "/account/sync", "/set?x=1"):
            response = await c.get(path)
            assert response.status_code == 503, path
            assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
            assert response.headers["retry-after"] == "1"
            body = response.json()
            assert body["status"] == 503
            assert "session store" in body["detail"]
        assert (await c.get("/plain")).status_code == 200
        async with client(app) as anonymous:
            # No cookie: nothing to load, so no store needed.
            assert (await anonymous.get("/get")).status_code == 200
        assert outage_logs(caplog) == (1, 0)
        durable_redis.start()
        response = await c.get("/get")
        assert response.status_code == 200
        assert response.json()["data"] == {"user": "alice"}
    assert outage_logs(caplog) == (1, 1)


def commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    diff = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in diff.items() if v and k != "info"}


async def test_untouched_session_costs_no_redis_command(
    redis_server: RedisServer, closing: list[SessionMiddleware]
) -> None:
    app = make_app(redis_server.url)
    closing.append(app)
    admin = redis.Redis.from_url(redis_server.url)
    try:
        async with client(app) as c:
            await c.get("/set?user=alice")
            before = commandstats(admin)
            for _ in range(20):
                assert (await c.get("/plain")).status_code == 200
            assert delta(before, commandstats(admin)) == {}
            before = commandstats(admin)
            for _ in range(10):
                assert (await c.get("/get")).json()["data"] == {"user": "alice"}
            # A read is exactly one GET, nothing else (no PTTL, no write-back).
            assert delta(before, commandstats(admin)) == {"get": 10}
    finally:
        admin.close()


@pytest.mark.parametrize("sessions", [0, 100_000])
async def test_start_up_does_not_depend_on_the_session_count(
    sessions: int, redis_server: RedisServer, closing: list[SessionMiddleware]
) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    try:
        value = encode_record({"user": 1, "tenant": "acme"}, 1, time.time() + 3600)
        # Filled server-side in one script (this private server only): fast and real records.
        fill = (
            "for i = 1, tonumber(ARGV[1]) do "
            "redis.call('SET', 'fs:session:s' .. i, ARGV[2], 'EX', 3600) end"
        )
        admin.eval(fill, 0, sessions, value)
        assert admin.dbsize() == sessions
        before = commandstats(admin)
        started = time.perf_counter()
        # Start-up: build the middleware (client, backend), run the lifespan, serve a request.
        app = SessionMiddleware(
            starlette_app(),
            settings(store_url=redis_server.url),  # type: ignore[arg-type]
        )
        closing.append(app)
        async with client(app) as c:
            assert (await c.get("/plain")).status_code == 200
        elapsed = time.perf_counter() - started
        # Nothing is read at start-up: not a single Redis command.
        assert delta(before, commandstats(admin)) == {}
        assert elapsed < 1.0, elapsed
        print(f"start-up with {sessions} sessions in the store: {elapsed * 1000:.1f} ms")
    finally:
        admin.close()


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
async def test_store_lost_between_load_and_write(
    fail_mode: str, durable_redis: RedisServer, closing: list[SessionMiddleware]
) -> None:
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from freightscale.sessions import load_session

    async def write_during_outage(request: Request) -> JSONResponse:
        session = await load_session(request)
        await asyncio.to_thread(durable_redis.stop)  # Redis dies while the handler runs
        session["cart"] = "lost"
        return JSONResponse({"ok": True})

    app = make_app(durable_redis.url, fail_mode=fail_mode)
    app.app.router.routes.append(Route("/write-during-outage", write_during_outage))  # type: ignore[attr-defined]
    closing.append(app)
    async with client(app) as c:
        await c.get("/set?user=alice")
        response = await c.get("/write-during-outage")
        if fail_mode == "open":
            assert response.status_code == 200
            assert response.headers.get_list("set-cookie") == []
        else:
            assert response.status_code == 503
            assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
        durable_redis.start()
        assert (await c.get("/get")).json()["data"] == {"user": "alice"}


async def test_metrics_count_loads_saves_outages_and_fallbacks(
    durable_redis: RedisServer, closing: list[SessionMiddleware]
) -> None:
    app = make_app(durable_redis.url, fail_mode="open")
    closing.append(app)
    admin = redis.Redis.from_url(durable_redis.url)
    with counted() as seen:
        async with client(app) as c:
            await c.get("/set?user=alice")  # saved
            await c.get("/get")  # hit
            sid = c.cookies["fs_session"].split(".")[0]
            admin.set(f"fs:session:{sid}", b"{not json")
            await c.get("/get")  # invalid (and the cookie is expired)
            await c.get("/set?user=bob")  # saved: a fresh session
            durable_redis.stop()
            await c.get("/get")  # error + fallback + one outage
            await c.get("/get")  # error + fallback, same outage
            durable_redis.start()
    admin.close()
    assert seen[("freightscale.sessions.saves", (("result", "saved"),))] == 2
    assert seen[("freightscale.sessions.loads", (("result", "hit"),))] == 1
    assert seen[("freightscale.sessions.loads", (("result", "invalid"),))] == 1
    assert seen[("freightscale.sessions.loads", (("result", "error"),))] == 2
    fallbacks = (("component", "sessions"), ("policy", "open"))
    assert seen[("freightscale.backend.fallbacks", fallbacks)] == 2
    outages = (("component", "sessions"), ("service", "redis"))
    assert seen[("freightscale.backend.outages", outages)] == 1


async def test_client_provider_resolved_on_first_use(
    redis_url: str, redis_prefix: str, closing: list[SessionMiddleware]
) -> None:
    # How build_stack wires the shared client: the middleware exists before the client opens.
    shared: list[Any] = [None]
    backend = RedisSessionBackend(lambda: shared[0], key_prefix=redis_prefix)
    app = SessionMiddleware(starlette_app(), settings(fail_mode="closed"), backend=backend)
    async with client(app) as c:
        assert (await c.get("/set?user=alice")).status_code == 503  # not open yet
        shared[0] = create_redis_client(redis_url)
        assert (await c.get("/set?user=alice")).status_code == 200
        assert (await c.get("/get")).json()["data"] == {"user": "alice"}
    await shared[0].aclose()
