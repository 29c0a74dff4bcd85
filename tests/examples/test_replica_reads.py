"""FreightOps reads go to a streaming replica the database layer keeps in rotation."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from examples.freightops.seed import SeedPlan

from tests.examples.conftest import SECRET, Server, seed_database
from tests.examples.test_freightops_e2e import bearer, login
from tests.pg_servers import PgCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seeded_cluster() -> Iterator[PgCluster]:
    """A primary + streaming replica holding a small FreightOps seed (on both)."""
    cluster = PgCluster.start(replica=True, max_connections=80)
    try:
        cluster.wait_streaming()

        asyncio.run(seed_database(cluster.primary.url, SeedPlan(tenants=1, users=10, shipments=50)))
        assert cluster.replica is not None
        deadline = time.monotonic() + 30
        while asyncio.run(_count(cluster.replica.dsn, "SELECT count(*) FROM shipments")) < 50:
            assert time.monotonic() < deadline, "the replica did not replay the seed"
            time.sleep(0.1)
        yield cluster
    finally:
        cluster.destroy()


async def _count(dsn: str, sql: str, *args: object) -> int:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        try:
            return int(await conn.fetchval(sql, *args))
        except asyncpg.UndefinedTableError:
            return 0
    finally:
        await conn.close()


async def test_reads_are_served_by_the_replica(
    seeded_cluster: PgCluster,
    redis_url: str,
    fo_redis_prefix: str,
    server_factory: Callable[..., list[Server]],
    tmp_path: Path,
) -> None:
    replica = seeded_cluster.replica
    assert replica is not None
    app_name = f"fo-replica-{uuid.uuid4().hex[:8]}"
    env = {
        "FREIGHTSCALE_ENVIRONMENT": "development",
        "FREIGHTSCALE_DATABASE__URL": seeded_cluster.primary.url,
        "FREIGHTSCALE_DATABASE__REPLICA_URLS": f'["{replica.url}"]',
        "FREIGHTSCALE_DATABASE__APPLICATION_NAME": app_name,
        "FREIGHTSCALE_DATABASE__ENABLED": "true",
        "FREIGHTSCALE_REDIS__URL": redis_url,
        "FREIGHTSCALE_REDIS__KEY_PREFIX": f"{fo_redis_prefix}-replica",
        "FREIGHTSCALE_AUTH__SECRET": SECRET,
        "FREIGHTOPS_PROFILE": "freightscale",
        "FREIGHTOPS_SESSION_DIR": str(tmp_path),
    }
    (server,) = server_factory(env)
    on_replica = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        viewer = bearer(await login(client, "viewer@acme.example"))
        for _ in range(5):
            listing = await client.get("/api/shipments", headers=viewer)
            assert listing.status_code == 200, listing.text
            assert listing.json()["items"]
        # The pool keeps the replica connection the reads used: it is there.
        assert await _count(replica.dsn, on_replica, app_name) >= 1
