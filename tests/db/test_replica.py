"""Routing against a real primary + streaming replica (our own throwaway servers)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text
from sqlalchemy.orm import registry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.db import Database, DatabaseSessionMiddleware, get_session, primary
from freightscale.stores import MemoryStore
from tests.db.conftest import UserHeaderAuth, fetchval
from tests.pg_servers import PgCluster

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False),
)

IN_RECOVERY = text("SELECT pg_is_in_recovery()")


class Item:
    id: int
    name: str

    def __init__(self, name: str) -> None:
        self.name = name


registry().map_imperatively(Item, items)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def cluster(pg_cluster: PgCluster) -> PgCluster:
    """The cluster with the ``items`` table present on the primary and the replica."""
    await fetchval(
        pg_cluster.primary.dsn,
        "CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY, name varchar(100) NOT NULL)",
    )
    assert pg_cluster.replica is not None
    with anyio.fail_after(10):
        while await fetchval(pg_cluster.replica.dsn, "SELECT to_regclass('items') IS NULL"):
            await anyio.sleep(0.05)
    return pg_cluster


def replica_db(make_database: Callable[..., Database], cluster: PgCluster, **kw: Any) -> Database:
    assert cluster.replica is not None
    kw.setdefault("application_name", "fstest-replica")
    return make_database(url=cluster.primary.url, replica_urls=[cluster.replica.url], **kw)


def make_app(db: Database) -> Any:
    async def add(request: Request) -> JSONResponse:
        session = get_session(request)
        name = request.query_params["name"]
        new_id = await session.scalar(insert(items).values(name=name).returning(items.c.id))
        return JSONResponse({"id": new_id}, status_code=201)

    async def read(request: Request) -> JSONResponse:
        session = get_session(request)
        row = (
            await session.execute(
                text("SELECT pg_is_in_recovery(), count(*) FROM items WHERE name = :n"),
                {"n": request.path_params["name"]},
            )
        ).one()
        return JSONResponse({"on_replica": row[0], "count": row[1]})

    app = Starlette(routes=[Route("/items", add, methods=["POST"]), Route("/items/{name}", read)])
    return UserHeaderAuth(DatabaseSessionMiddleware(app, database=db))


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")


async def test_reads_go_to_the_replica_and_writes_to_the_primary(
    cluster: PgCluster, make_database: Callable[..., Database]
) -> None:
    db = replica_db(make_database, cluster)
    await db.replicas.check_all()
    assert [r.healthy for r in db.replicas.replicas] == [True]
    async with db.session() as session:
        assert await session.scalar(IN_RECOVERY) is True
        await session.execute(insert(items).values(name="routing-1"))
        # The transaction wrote: from now on this session reads the primary.
        assert await session.scalar(IN_RECOVERY) is False
        assert (
            await session.scalar(select(items.c.id).where(items.c.name == "routing-1")) is not None
        )
        await session.commit()
    async with db.session() as session:
        assert await session.scalar(select(items.c.id).limit(1).with_for_update()) is not None
        assert await session.scalar(IN_RECOVERY) is False  # FOR UPDATE made it sticky
    async with db.session() as session:
        # ORM: a replica read, then a flush goes to the primary and sticks.
        assert await session.scalar(IN_RECOVERY) is True
        session.add(Item("orm-1"))
        await session.flush()
        assert await session.scalar(IN_RECOVERY) is False
        found = await session.scalar(select(Item).where(Item.name == "orm-1"))  # type: ignore[arg-type]
        assert found is not None
        await session.commit()
    async with db.session() as session:
        with primary():
            assert await session.scalar(IN_RECOVERY) is False
        assert await session.scalar(IN_RECOVERY) is True


async def test_read_after_write_by_the_same_client_sees_the_write(
    cluster: PgCluster, make_database: Callable[..., Database]
) -> None:
    clock = Clock()
    db = replica_db(
        make_database, cluster, read_your_writes_window=5.0, store=MemoryStore(clock=clock)
    )
    await db.replicas.check_all()
    async with client(make_app(db)) as http:
        r = await http.post("/items", params={"name": "ryw-1"}, headers={"x-user": "alice"})
        assert r.status_code == 201
        r = await http.get("/items/ryw-1", headers={"x-user": "alice"})
        assert r.json() == {"on_replica": False, "count": 1}
        # Another user has no marker: replica.
        r = await http.get("/items/ryw-1", headers={"x-user": "bob"})
        assert r.json()["on_replica"] is True
        # Anonymous clients never get (or match) a marker.
        r = await http.get("/items/ryw-1")
        assert r.json()["on_replica"] is True
        # After the window, alice is back on the replica.
        clock.now += 6
        r = await http.get("/items/ryw-1", headers={"x-user": "alice"})
        assert r.json()["on_replica"] is True


async def test_a_failed_request_leaves_no_marker(
    cluster: PgCluster, make_database: Callable[..., Database]
) -> None:
    db = replica_db(make_database, cluster)
    await db.replicas.check_all()

    async def boom(request: Request) -> JSONResponse:
        await get_session(request).execute(insert(items).values(name="rolled-back"))
        return JSONResponse({"error": "nope"}, status_code=422)

    app = UserHeaderAuth(
        DatabaseSessionMiddleware(Starlette(routes=[Route("/", boom)]), database=db)
    )
    async with client(app) as http:
        assert (await http.get("/", headers={"x-user": "carol"})).status_code == 422
    assert (
        await fetchval(cluster.primary.dsn, "SELECT count(*) FROM items WHERE name='rolled-back'")
        == 0
    )
    async with client(make_app(db)) as http:
        r = await http.get("/items/x", headers={"x-user": "carol"})
        assert r.json()["on_replica"] is True


async def test_round_robin_over_healthy_replicas(
    cluster: PgCluster, make_database: Callable[..., Database]
) -> None:
    assert cluster.replica is not None
    db = make_database(
        url=cluster.primary.url, replica_urls=[cluster.replica.url, cluster.replica.url]
    )
    await db.replicas.check_all()
    chosen = [db.replicas.choose() for _ in range(4)]
    assert chosen[0] is not chosen[1]
    assert chosen[0] is chosen[2]
    db.replicas.mark_down(db.engines.replicas[0], "test")
    assert {id(db.replicas.choose()) for _ in range(3)} == {id(db.engines.replicas[1])}


async def test_lagging_replica_is_avoided(
    cluster: PgCluster, make_database: Callable[..., Database]
) -> None:
    assert cluster.replica is not None
    db = replica_db(make_database, cluster, max_replica_lag=0.3)
    await db.replicas.check_all()
    assert db.replicas.replicas[0].healthy
    await fetchval(cluster.replica.dsn, "SELECT pg_wal_replay_pause()")
    try:
        await fetchval(cluster.primary.dsn, "INSERT INTO items(name) VALUES ('lag-1')")
        with anyio.fail_after(10):
            while not await fetchval(
                cluster.replica.dsn,
                "SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()",
            ):
                await anyio.sleep(0.05)
        await anyio.sleep(0.4)
        await db.replicas.check_all()
        replica = db.replicas.replicas[0]
        assert not replica.healthy
        assert replica.lag is not None
        assert replica.lag > 0.3
        assert "lag" in (replica.reason or "")
        async with client(make_app(db)) as http:
            r = await http.get("/items/lag-1")
            assert r.json() == {"on_replica": False, "count": 1}
    finally:
        await fetchval(cluster.replica.dsn, "SELECT pg_wal_replay_resume()")
    with anyio.fail_after(10):
        while True:
            await db.replicas.check_all()
            if db.replicas.replicas[0].healthy:
                break
            await anyio.sleep(0.1)


async def test_stopped_replica_is_taken_out_and_reads_keep_succeeding(
    cluster: PgCluster, make_database: Callable[..., Database]
) -> None:
    assert cluster.replica is not None
    db = replica_db(make_database, cluster, replica_check_interval=0.2)
    await db.replicas.check_all()
    app = make_app(db)
    async with client(app) as http:
        assert (await http.get("/items/x")).json()["on_replica"] is True
        await anyio.to_thread.run_sync(cluster.replica.stop)
        try:
            statuses = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                r = await http.get("/items/x")
                statuses.append(r.status_code)
                if r.status_code == 503:
                    assert r.headers["content-type"] == "application/problem+json"
                    assert "retry-after" in r.headers
                else:
                    assert r.status_code == 200
                    if r.json()["on_replica"] is False:
                        break
                await anyio.sleep(0.05)
            assert not db.replicas.replicas[0].healthy
            # Once out of rotation, every read succeeds on the primary.
            for _ in range(10):
                r = await http.get("/items/x")
                assert r.status_code == 200
                assert r.json()["on_replica"] is False
        finally:
            await anyio.to_thread.run_sync(cluster.replica.start)
            await anyio.to_thread.run_sync(cluster.wait_streaming)
        with anyio.fail_after(10):
            while not db.replicas.replicas[0].healthy:
                await anyio.sleep(0.1)
        assert (await http.get("/items/x")).json()["on_replica"] is True


async def test_primary_restart_gives_503_then_recovers_without_app_restart(
    cluster: PgCluster, make_database: Callable[..., Database]
) -> None:
    db = make_database(url=cluster.primary.url, pool_size=3, max_overflow=0)
    app = make_app(db)
    async with client(app) as http:
        for _ in range(5):
            assert (await http.post("/items", params={"name": "restart"})).status_code == 201
        assert db.engines.primary.pool.checkedin() >= 1  # type: ignore[attr-defined]
        await anyio.to_thread.run_sync(cluster.primary.stop)
        try:
            r = await http.get("/items/restart")
            assert r.status_code == 503
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["retry-after"] == "2"
            assert r.json()["status"] == 503
            assert db.outage.down
        finally:
            await anyio.to_thread.run_sync(cluster.primary.start)
        # Pooled connections are stale; pre-ping replaces them: no failure.
        for _ in range(5):
            r = await http.get("/items/restart")
            assert r.status_code == 200, r.text
            assert r.json()["count"] >= 5
        assert not db.outage.down
    await anyio.to_thread.run_sync(cluster.wait_streaming)


@pytest.fixture(params=["memory", "redis"])
async def marker_store(request: pytest.FixtureRequest) -> Any:
    """The read-your-writes store: in-process, or the real Redis (shared by instances)."""
    if request.param == "memory":
        store = MemoryStore()
        yield store
        return
    from freightscale.stores.redis import RedisStore

    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    store = RedisStore.from_url(url, key_prefix=prefix)
    yield store
    await store.aclose()


async def test_read_your_writes_holds_across_instances(
    cluster: PgCluster, make_database: Callable[..., Database], marker_store: Any
) -> None:
    # Two "instances" of the app share only the marker store.
    first = replica_db(make_database, cluster, read_your_writes_window=30, store=marker_store)
    second = replica_db(make_database, cluster, read_your_writes_window=30, store=marker_store)
    await first.replicas.check_all()
    await second.replicas.check_all()
    name = f"ryw-{uuid.uuid4().hex[:8]}"
    async with client(make_app(first)) as a, client(make_app(second)) as b:
        assert (await b.get("/items/x", headers={"x-user": "dave"})).json()["on_replica"] is True
        r = await a.post("/items", params={"name": name}, headers={"x-user": "dave"})
        assert r.status_code == 201
        r = await b.get(f"/items/{name}", headers={"x-user": "dave"})
        assert r.json() == {"on_replica": False, "count": 1}
        assert (await b.get("/items/x", headers={"x-user": "erin"})).json()["on_replica"] is True
    keys = []
    for user in ("dave", "erin"):
        scope: dict[str, Any] = {"type": "http", "headers": [(b"x-user", user.encode())]}
        from freightscale.context import Principal

        scope["user"] = Principal(user_id=user, tenant_id="t1")
        keys.append(first.client_key(scope))
    ttl = await first.store.expires_in(keys[0] or "")
    assert ttl is not None
    assert 0 < ttl <= 30
    assert not await first.store.exists(keys[1] or "")


async def test_marker_store_outage_sends_reads_to_the_primary(
    cluster: PgCluster,
    make_database: Callable[..., Database],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from freightscale.stores.redis import RedisStore
    from tests.pg_servers import free_port

    dead = RedisStore.from_url(
        f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.2, socket_timeout=0.2, retries=0
    )
    db = replica_db(make_database, cluster, store=dead, marker_timeout=0.5)
    await db.replicas.check_all()
    try:
        async with client(make_app(db)) as http:
            for _ in range(3):
                r = await http.get("/items/x", headers={"x-user": "frank"})
                assert r.status_code == 200
                assert r.json()["on_replica"] is False
    finally:
        await dead.aclose()
    assert caplog.text.count("read-your-writes store failed") == 1
