"""Query-result cache against the real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Uuid,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from freightscale.caching import CacheBackend, QueryCache
from freightscale.context import Principal, bind_principal
from freightscale.stores import Store

metadata = MetaData()
shipments = Table(
    "qc_shipments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant", String(20)),
    Column("status", String(20)),
    Column("weight", Numeric(10, 2)),
    Column("ref", Uuid),
    Column("booked", Date),
    Column("updated", DateTime(timezone=True)),
)
REF = uuid.uuid4()
WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
        await conn.execute(insert(shipments), [
            {"id": i, "tenant": "acme" if i % 2 else "globex", "status": "booked",
             "weight": Decimal("12.50"), "ref": REF, "booked": WHEN.date(), "updated": WHEN}
            for i in range(1, 7)
        ])  # fmt: skip
    yield engine
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await engine.dispose()


async def test_cached_until_invalidated_and_per_tenant(engine: AsyncEngine, store: Store) -> None:
    queries = QueryCache(CacheBackend(store))
    stmt = select(shipments).where(shipments.c.status == "booked").order_by(shipments.c.id)
    async with engine.connect() as conn:
        with bind_principal(Principal(user_id="ann", tenant_id="acme")):
            first = await queries.all(conn, stmt, ttl=60, tags=["shipments"])
        assert len(first) == 6
        assert first[0]["weight"] == Decimal("12.50")
        assert first[0]["ref"] == REF
        assert first[0]["updated"] == WHEN
        await conn.execute(update(shipments).values(status="booked"))  # no-op write
        await conn.execute(delete(shipments).where(shipments.c.id == 1))
        await conn.commit()
        with bind_principal(Principal(user_id="ann", tenant_id="acme")):
            cached = await queries.all(conn, stmt, ttl=60, tags=["shipments"])
        assert cached == first  # served from the cache, types intact
        with bind_principal(Principal(user_id="cat", tenant_id="globex")):
            other = await queries.all(conn, stmt, ttl=60, tags=["shipments"])
        assert len(other) == 5  # another tenant never shares acme's result
        assert await queries.invalidate(["shipments"]) == 2
        with bind_principal(Principal(user_id="ann", tenant_id="acme")):
            fresh = await queries.all(conn, stmt, ttl=60)
        assert len(fresh) == 5
        # Different parameters, different key.
        other_stmt = select(shipments.c.id).where(shipments.c.status == "lost")
        assert await queries.all(conn, other_stmt) == []


async def test_only_selects(engine: AsyncEngine) -> None:
    queries = QueryCache(CacheBackend())
    async with engine.connect() as conn:
        with pytest.raises(TypeError, match="SELECT"):
            await queries.all(conn, delete(shipments))  # type: ignore[arg-type]
