"""1000 concurrent requests against a pool of 10 + 5: never more than 15 connections."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import asyncpg
import httpx
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.db import Database, DatabaseSessionMiddleware, get_session


async def test_thousand_concurrent_requests_stay_within_the_pool(
    database_url: str, make_database: Callable[..., Database], app_name: str
) -> None:
    db = make_database(
        url=database_url,
        pool_size=10,
        max_overflow=5,
        pool_timeout=20,
        connect_timeout=15,  # a saturated 2-core machine can be slow to connect
        application_name=app_name,
    )

    async def handler(request: Request) -> JSONResponse:
        value = await get_session(request).scalar(
            text("SELECT count(*) FROM pg_sleep(0.002), generate_series(1, 10)")
        )
        return JSONResponse({"n": value})

    app = DatabaseSessionMiddleware(Starlette(routes=[Route("/", handler)]), database=db)
    statuses: list[int] = []
    bodies: list[Any] = []
    samples: list[int] = []
    running = True

    # Connected before the load starts: 1000 new tasks can starve the loop.
    sampler = await asyncpg.connect(
        database_url.replace("postgresql+asyncpg://", "postgresql://"), timeout=15
    )

    async def sample() -> None:
        while running:
            samples.append(
                await sampler.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    app_name,
                )
            )
            await anyio.sleep(0.02)

    try:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://test", limits=limits
        ) as http:

            async def one() -> None:
                r = await http.get("/")
                statuses.append(r.status_code)
                if r.status_code == 200:
                    bodies.append(r.json())
                else:
                    assert r.status_code == 503, r.text
                    assert r.headers["content-type"] == "application/problem+json"
                    assert r.headers["retry-after"]

            started = time.monotonic()
            with anyio.fail_after(30):
                async with anyio.create_task_group() as outer:
                    outer.start_soon(sample)
                    async with anyio.create_task_group() as tg:
                        for _ in range(1000):
                            tg.start_soon(one)
                    running = False
            elapsed = time.monotonic() - started
    finally:
        await sampler.close()

    assert len(statuses) == 1000
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 500, f"too many 503s: {statuses.count(503)} in {elapsed:.1f}s"
    assert all(b == {"n": 10} for b in bodies)
    assert samples, "pg_stat_activity was never sampled"
    assert max(samples) <= 15, f"saw {max(samples)} connections"
    assert max(samples) >= 10, f"the load never filled the pool: {max(samples)}"
    assert int(db.engines.primary.pool.checkedout()) == 0  # type: ignore[attr-defined]
