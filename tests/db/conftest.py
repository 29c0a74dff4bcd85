"""Database-layer fixtures: a throwaway primary + streaming replica, and app helpers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from freightscale.context import Principal, bind_principal
from freightscale.db import Database
from freightscale.settings.database import DatabaseSettings
from tests.pg_servers import PgCluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """Our own primary with one streaming replica (session-scoped: started once)."""
    cluster = PgCluster.start(replica=True, max_connections=60)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def app_name() -> str:
    """A unique application_name, to find this test's connections in pg_stat_activity."""
    return f"fstest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def make_database() -> AsyncIterator[Callable[..., Database]]:
    """Build ``Database`` objects from settings overrides; all closed afterwards."""
    made: list[Database] = []

    def make(**overrides: Any) -> Database:
        store = overrides.pop("store", None)
        meter_provider = overrides.pop("meter_provider", None)
        db = Database(DatabaseSettings(**overrides), store=store, meter_provider=meter_provider)
        made.append(db)
        return db

    yield make
    for db in made:
        await db.aclose()


async def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    """One value from a direct asyncpg connection (test assertions only)."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


class UserHeaderAuth:
    """Test-only ASGI middleware: the ``x-user`` header becomes the principal."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        user = None
        if scope["type"] == "http":
            for name, value in scope.get("headers", []):
                if name == b"x-user":
                    user = Principal(user_id=value.decode(), tenant_id="t1")
        with bind_principal(user, scope):
            await self.app(scope, receive, send)
