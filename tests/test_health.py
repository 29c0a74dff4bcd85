"""HealthApp: liveness, readiness, timeouts, draining and the built-in checks."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.routing import Mount

from freightscale.exceptions import StoreUnavailableError
from freightscale.health import (
    HEALTH_CONTENT_TYPE,
    CheckWarning,
    HealthApp,
    engine_check,
    redis_check,
    store_check,
)
from freightscale.settings import HealthSettings
from freightscale.stores import MemoryStore
from tests.helpers import LifespanDriver, free_port

NO_CACHE = HealthSettings(cache_ttl=0)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://testserver")


async def ready(app: Any, path: str = "/readyz") -> tuple[int, dict[str, Any]]:
    async with client(app) as c:
        response = await c.get(path)
    assert response.headers["content-type"] == HEALTH_CONTENT_TYPE
    assert response.headers["cache-control"] == "no-store"
    return response.status_code, response.json()


async def passing() -> None:
    return None


async def failing() -> None:
    raise ConnectionError("connection refused to 10.0.0.5:6379")


async def test_liveness() -> None:
    assert await ready(HealthApp(), "/healthz") == (200, {"status": "pass"})


async def test_readiness_without_checks_passes() -> None:
    assert await ready(HealthApp()) == (200, {"status": "pass", "checks": {}})


async def test_readiness_reports_each_check_in_health_json_format() -> None:
    async def degraded() -> None:
        raise CheckWarning("replica lag 3s")

    app = HealthApp(NO_CACHE, checks={"db": passing, "cache": degraded, "redis": failing})
    status, body = await ready(app)
    assert status == 503
    assert body["status"] == "fail"
    assert set(body["checks"]) == {"db:responseTime", "cache:responseTime", "redis:responseTime"}
    (db,) = body["checks"]["db:responseTime"]
    assert db["status"] == "pass"
    assert db["observedUnit"] == "ms"
    assert isinstance(db["observedValue"], float)
    assert db["observedValue"] >= 0
    assert "output" not in db
    assert db["time"].endswith("+00:00")
    (cache,) = body["checks"]["cache:responseTime"]
    assert cache["status"] == "warn"
    assert cache["output"] == "CheckWarning: replica lag 3s"
    (redis,) = body["checks"]["redis:responseTime"]
    assert redis["status"] == "fail"
    assert redis["output"] == "ConnectionError: connection refused to 10.0.0.5:6379"


async def test_warn_is_still_ready() -> None:
    async def degraded() -> None:
        raise CheckWarning

    status, body = await ready(HealthApp(NO_CACHE, checks={"a": passing, "b": degraded}))
    assert status == 200
    assert body["status"] == "warn"


async def test_false_result_and_synchronous_raise_fail() -> None:
    async def says_no() -> bool:
        return False

    def broken() -> Any:
        raise RuntimeError("not even a coroutine")

    status, body = await ready(HealthApp(NO_CACHE, checks={"no": says_no, "broken": broken}))
    assert status == 503
    assert body["checks"]["no:responseTime"][0]["output"] == "check returned False"
    assert "not even a coroutine" in body["checks"]["broken:responseTime"][0]["output"]


async def test_hanging_check_fails_within_its_timeout() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    app = HealthApp(NO_CACHE)
    app.register("hangs", hangs, timeout=0.2)
    app.register("ok", passing)
    start = time.perf_counter()
    status, body = await ready(app)
    elapsed = time.perf_counter() - start
    assert status == 503
    assert elapsed < 1.0
    (entry,) = body["checks"]["hangs:responseTime"]
    assert entry["status"] == "fail"
    assert entry["output"] == "timed out after 0.2s"
    assert 190 <= entry["observedValue"] < 1000
    assert body["checks"]["ok:responseTime"][0]["status"] == "pass"


async def test_check_that_ignores_cancellation_still_times_out() -> None:
    finished = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # swallows the cancellation for a while
            finished.set()

    app = HealthApp(HealthSettings(cache_ttl=0, check_timeout=0.1), checks={"s": stubborn})
    start = time.perf_counter()
    status, _ = await ready(app)
    assert status == 503
    assert time.perf_counter() - start < 0.3
    await asyncio.wait_for(finished.wait(), 2)


async def test_checks_run_concurrently() -> None:
    async def slow() -> None:
        await asyncio.sleep(0.3)

    app = HealthApp(NO_CACHE, checks={f"s{i}": slow for i in range(4)})
    start = time.perf_counter()
    status, _ = await ready(app)
    assert status == 200
    assert time.perf_counter() - start < 0.9


async def test_draining_fails_readiness_but_not_liveness() -> None:
    app = HealthApp(NO_CACHE, checks={"ok": passing})
    app.set_draining()
    assert app.draining
    assert await ready(app) == (503, {"status": "fail", "output": "draining"})
    assert await ready(app, "/healthz") == (200, {"status": "pass"})
    app.set_draining(False)
    assert (await ready(app))[0] == 200


async def test_results_are_cached_and_concurrent_probes_share_a_run() -> None:
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)

    cached = HealthApp(HealthSettings(cache_ttl=30), checks={"c": counted})
    async with client(cached) as c:
        responses = await asyncio.gather(*(c.get("/readyz") for _ in range(5)))
        await c.get("/readyz")
    assert [r.status_code for r in responses] == [200] * 5
    assert calls == 1

    calls = 0
    uncached = HealthApp(NO_CACHE, checks={"c": counted})
    async with client(uncached) as c:
        await c.get("/readyz")
        await c.get("/readyz")
    assert calls == 2


async def test_registration_rules() -> None:
    app = HealthApp()
    app.register("redis", passing)
    with pytest.raises(ValueError, match="already registered"):
        app.register("redis", passing)
    for bad in ("", "has space", "colon:name", "x" * 65):
        with pytest.raises(ValueError, match="letters, digits"):
            app.register(bad, passing)
    with pytest.raises(ValueError, match="timeout must be > 0"):
        app.register("t", passing, timeout=0)
    app.unregister("redis")
    app.unregister("never-registered")
    assert app.check_names == ()


async def test_show_output_off_hides_error_text() -> None:
    app = HealthApp(HealthSettings(cache_ttl=0, show_output=False), checks={"r": failing})
    status, body = await ready(app)
    assert status == 503
    assert "output" not in body["checks"]["r:responseTime"][0]


async def test_paths_methods_and_head() -> None:
    app = HealthApp(HealthSettings(liveness_path="/live", readiness_path="/ready"))
    async with client(app) as c:
        assert (await c.get("/live")).status_code == 200
        assert (await c.get("/healthz")).status_code == 404
        assert (await c.post("/ready")).status_code == 405
        head = await c.head("/ready")
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0


async def test_mountable_under_starlette() -> None:
    app = Starlette(routes=[Mount("/ops", HealthApp())])
    async with client(app) as c:
        live = await c.get("/ops/healthz")
        missing = await c.get("/healthz")
    assert live.status_code == 200
    assert live.json() == {"status": "pass"}
    assert missing.status_code == 404


async def test_served_alone_it_answers_lifespan() -> None:
    driver = LifespanDriver(HealthApp())
    assert (await driver.startup())["type"] == "lifespan.startup.complete"
    assert (await driver.shutdown())["type"] == "lifespan.shutdown.complete"


def test_settings_reject_identical_paths() -> None:
    with pytest.raises(ValueError, match="different paths"):
        HealthSettings(liveness_path="/h", readiness_path="/h")


# ---- built-in checks against real services --------------------------------------


async def test_store_check() -> None:
    store = MemoryStore()
    await store_check(store)()

    class Down(MemoryStore):
        async def check(self) -> None:
            raise StoreUnavailableError("down")

    status, body = await ready(HealthApp(NO_CACHE, checks={"s": store_check(Down())}))
    assert status == 503
    assert body["checks"]["s:responseTime"][0]["output"] == "StoreUnavailableError: down"


async def test_redis_check_against_the_real_redis(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        status, _ = await ready(HealthApp(NO_CACHE, checks={"redis": redis_check(client)}))
    finally:
        await client.aclose()
    assert status == 200


async def test_redis_check_on_a_closed_port_fails_fast() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    app = HealthApp(HealthSettings(cache_ttl=0, check_timeout=1.0))
    app.register("redis", redis_check(client))
    try:
        start = time.perf_counter()
        status, body = await ready(app)
    finally:
        await client.aclose()
    assert status == 503
    assert time.perf_counter() - start < 1.5
    assert body["checks"]["redis:responseTime"][0]["status"] == "fail"


async def test_engine_check_against_real_postgres_and_sqlite(
    database_url: str, tmp_path: Any
) -> None:
    postgres = create_async_engine(database_url)
    sqlite = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'h.db'}")
    dead = create_async_engine(
        f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test",
        connect_args={"timeout": 0.5},
    )
    app = HealthApp(
        NO_CACHE,
        checks={"pg": engine_check(postgres), "sqlite": engine_check(sqlite)},
    )
    app.register("dead", engine_check(dead), timeout=1.5)
    try:
        status, body = await ready(app)
    finally:
        for engine in (postgres, sqlite, dead):
            await engine.dispose()
    checks = {name: entries[0]["status"] for name, entries in body["checks"].items()}
    assert checks == {
        "pg:responseTime": "pass",
        "sqlite:responseTime": "pass",
        "dead:responseTime": "fail",
    }
    assert status == 503
    assert json.dumps(body)  # serializable as is
