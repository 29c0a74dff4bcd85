"""Shared fixtures: the real Redis and PostgreSQL, never fakes of them.

Addresses come from ``FREIGHTSCALE_TEST_REDIS_URL`` and
``FREIGHTSCALE_TEST_DATABASE_URL`` and default to the local services. A
service that does not answer fails the tests that need it, with the command
that starts it: a missing service is never a silent skip.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.servers import RedisClusterServers, RedisServer

pytest_plugins = ["tests.blocking"]

REDIS_URL = os.environ.get("FREIGHTSCALE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get(
    "FREIGHTSCALE_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)

_START_REDIS = "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no"
_START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Run every ``async def`` test under anyio (before anyio's own hook looks)."""
    if inspect.iscoroutinefunction(obj) and name.startswith("test"):
        pytest.mark.anyio(obj)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _service_missing(name: str, url: str, start: str, error: BaseException) -> None:
    pytest.fail(
        f"{name} at {url} is not reachable ({error!r}). The tests need the real "
        f"service; start it (e.g. `{start}`) or point {name.upper()}_URL "
        f"(FREIGHTSCALE_TEST_{'REDIS' if name == 'redis' else 'DATABASE'}_URL) at one. "
        f"CI={os.environ.get('CI', '')!r}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis the tests use (checked once per session)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        _service_missing("redis", REDIS_URL, _START_REDIS, exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    import redis

    prefix = f"fstest-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


async def _create_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _plain_pg_url(url: str) -> str:
    """asyncpg wants ``postgresql://``; SQLAlchemy wants ``postgresql+asyncpg://``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql"))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh PostgreSQL database for this test session.

    The database is created from the configured server and dropped at the end,
    so runs never see each other's tables.
    """
    admin = _plain_pg_url(DATABASE_URL)
    name = f"fstest_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_create_database(admin, name))
    except Exception as exc:
        _service_missing("postgres", DATABASE_URL, _START_POSTGRES, exc)
    parts = urlsplit(DATABASE_URL)
    url = urlunsplit(parts._replace(scheme="postgresql+asyncpg", path="/" + name))
    yield url
    asyncio.run(_drop_database(admin, name))


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[object]:
    """A plain redis-py asyncio client for assertions on the server's state."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def redis_server(redis_url: str) -> Iterator[RedisServer]:
    """A private redis-server on a free port that the test may stop and restart."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster_url(redis_url: str) -> Iterator[str]:
    """URL (``redis+cluster://…``) of a 3-master Redis Cluster started for this session."""
    cluster = RedisClusterServers().start()
    yield cluster.url
    cluster.cleanup()
