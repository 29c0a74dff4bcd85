"""The Redis client factory against real servers: single node, restart, cluster."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio.cluster import RedisCluster

from freightscale.backends.redis import create_redis_client, parse_redis_url, ping
from freightscale.exceptions import ConfigurationError, StoreUnavailableError
from freightscale.settings import RedisSettings
from freightscale.stores.redis import RedisStore
from tests.servers import RedisServer, free_port


@pytest.mark.parametrize(
    ("url", "kind", "nodes", "db"),
    [
        ("redis://127.0.0.1:6379/2", "single", (("127.0.0.1", 6379),), 2),
        ("rediss://cache.example:6380", "single", (("cache.example", 6380),), 0),
        ("redis+sentinel://s1:26379,s2:26380/primary/1", "sentinel",
         (("s1", 26379), ("s2", 26380)), 1),
        ("redis+cluster://a:7000,b:7001,c", "cluster", (("a", 7000), ("b", 7001), ("c", 6379)), 0),
    ],
)  # fmt: skip
def test_parse_url_forms(url: str, kind: str, nodes: tuple[tuple[str, int], ...], db: int) -> None:
    target = parse_redis_url(url)
    assert (target.kind, target.nodes, target.db) == (kind, nodes, db)


def test_parse_url_credentials_are_unquoted_and_masked() -> None:
    target = parse_redis_url("redis://user:p%40ss@h:1/0")
    assert (target.username, target.password) == ("user", "p@ss")
    assert "p@ss" not in repr(target)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("htp://x", "not one of"),
        ("redis://a:1,b:2", r"use redis\+cluster"),
        ("redis://h:notaport", "bad host:port"),
        ("redis://h:1/abc", "not a number"),
        ("redis+sentinel://h:1", "master name"),
        ("redis+cluster://h:1/3", "only db 0"),
    ],
)
def test_parse_url_errors_name_the_problem(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_redis_url(url)


def test_empty_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="FREIGHTSCALE_REDIS__URL"):
        create_redis_client(RedisSettings())


async def test_single_node_roundtrip(redis_url: str, redis_prefix: str) -> None:
    client = create_redis_client(redis_url)
    try:
        assert await ping(client) < 2.0
        await client.set(f"{redis_prefix}:k", b"v")
        assert await client.get(f"{redis_prefix}:k") == b"v"
    finally:
        await client.aclose()


async def test_pool_is_bounded_and_waits(redis_url: str, redis_prefix: str) -> None:
    name = f"fsbound{redis_prefix[-8:]}"
    settings = RedisSettings(url=redis_url, max_connections=4, client_name=name, pool_timeout=10)  # type: ignore[arg-type]
    client = create_redis_client(settings)
    observer = create_redis_client(redis_url)
    try:
        # 40 concurrent blocking commands, each holding a connection for 0.2 s.
        blockers = [client.blpop([f"{redis_prefix}:none{i}"], timeout=0.2) for i in range(40)]
        task = asyncio.gather(*blockers)
        peak = 0
        while not task.done():
            clients = await observer.client_list()
            peak = max(peak, sum(1 for c in clients if c.get("name") == name))
            await asyncio.sleep(0.05)
        assert await task == [None] * 40
        assert 1 <= peak <= 4
    finally:
        await client.aclose()
        await observer.aclose()


async def test_pool_timeout_is_unavailable_not_hang(redis_url: str, redis_prefix: str) -> None:
    settings = RedisSettings(url=redis_url, max_connections=1, pool_timeout=0.2)  # type: ignore[arg-type]
    store = RedisStore(create_redis_client(settings), key_prefix=redis_prefix, owns_client=True)
    try:
        holder = asyncio.ensure_future(store.client.blpop([f"{redis_prefix}:x"], timeout=1))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await store.get("k")
        assert time.monotonic() - started < 1.0
        await holder
    finally:
        await store.aclose()


async def test_unreachable_redis_fails_within_connect_timeout() -> None:
    port = free_port()  # nothing listens here
    settings = RedisSettings(url=f"redis://127.0.0.1:{port}/0", connect_timeout=0.3, retries=1)  # type: ignore[arg-type]
    store = RedisStore(create_redis_client(settings), owns_client=True)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        await store.check()
    with pytest.raises(StoreUnavailableError):
        await store.get("k")
    assert time.monotonic() - started < 3.0
    await store.aclose()


async def test_client_reconnects_after_redis_restart(redis_server: RedisServer) -> None:
    settings = RedisSettings(
        url=redis_server.url, connect_timeout=0.5, socket_timeout=0.5, retries=1
    )  # type: ignore[arg-type]
    store = RedisStore(create_redis_client(settings), owns_client=True)
    try:
        await store.set("before", b"1")
        assert await store.get("before") == b"1"
        redis_server.stop()
        with pytest.raises(StoreUnavailableError):
            await store.get("before")
        redis_server.start()
        # No new client, no manual reconnect: the next command just works.
        await store.set("after", b"2")
        assert await store.get("after") == b"2"
        assert await store.get("before") is None  # the restarted server kept nothing
    finally:
        await store.aclose()


async def test_cluster_client_spreads_keys(redis_cluster_url: str, redis_prefix: str) -> None:
    client = create_redis_client(redis_cluster_url)
    try:
        assert isinstance(client, RedisCluster)
        await ping(client)
        keys = [f"{redis_prefix}:{i}" for i in range(30)]
        for key in keys:
            await client.set(key, key.encode())
        assert [await client.get(k) for k in keys] == [k.encode() for k in keys]
        owners = {client.get_node_from_key(k).name for k in keys}
        assert len(owners) == 3
        await client.delete(*keys)
    finally:
        await client.aclose()
