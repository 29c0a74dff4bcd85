"""build_stack with the database layer: engines opened at startup, one session per request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.db import get_session
from freightscale.settings import FreightScaleSettings
from freightscale.stack import build_stack
from tests.helpers import LifespanDriver


async def total(request: Request) -> JSONResponse:
    session = get_session(request)
    value = (await session.execute(text("SELECT 40 + 2"))).scalar_one()
    return JSONResponse({"value": value})


def app() -> Starlette:
    return Starlette(routes=[Route("/total", total)])


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'stack.db'}"
    url: str = request.getfixturevalue("database_url")
    return url


async def test_database_component_serves_sessions_and_readiness(db_url: str) -> None:
    settings = FreightScaleSettings(
        database={"enabled": True, "url": db_url}, health={"cache_ttl": 0}
    )
    stack = build_stack(app(), settings)
    assert "database" in stack.components
    driver = LifespanDriver(stack)
    assert (await driver.startup())["type"] == "lifespan.startup.complete"
    assert stack.database is not None
    try:
        transport = httpx.ASGITransport(stack)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answer = await client.get("/total")
            ready = await client.get("/readyz")
        assert answer.json() == {"value": 42}
        assert ready.status_code == 200
        assert "database" in "".join(ready.json()["checks"])
        pool: Any = stack.database.engines.primary.pool
        assert pool.checkedout() == 0  # the request's connection went back
    finally:
        assert (await driver.shutdown())["type"] == "lifespan.shutdown.complete"


async def test_database_is_off_by_default() -> None:
    stack = build_stack(app(), FreightScaleSettings())
    assert "database" not in stack.components
    assert stack.database is None
