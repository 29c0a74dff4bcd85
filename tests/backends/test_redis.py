"""The Redis client factory against real servers: single node, restart, cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import TimeoutError as RedisTimeoutError

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


@pytest.fixture
async def quick_client(redis_server: RedisServer) -> AsyncIterator[Any]:
    """A client of the private server with ``socket_timeout=0.3`` and no retries."""
    settings = RedisSettings(url=redis_server.url, socket_timeout=0.3, retries=0)  # type: ignore[arg-type]
    client = create_redis_client(settings)
    await client.ping()
    yield client
    await client.aclose()


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """The server stops answering (SIGSTOP) for the block, then resumes."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


async def test_socket_timeout_bounds_a_read_and_the_client_recovers(
    redis_server: RedisServer, quick_client: Any, redis_prefix: str
) -> None:
    key = f"{redis_prefix}:k"
    await quick_client.set(key, b"v")
    with paused(redis_server):
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError, match=r"socket_timeout=0\.3"):
            await quick_client.get(key)
        elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.3 + 0.5
    # The timed-out connection was dropped: the next command gets a fresh one.
    assert await quick_client.get(key) == b"v"
    # Timers are re-armed per connection, not per command: many quick
    # commands spanning several timeouts never trip one.
    for _ in range(20):
        assert await quick_client.get(key) == b"v"
        await asyncio.sleep(0.05)


async def test_socket_timeout_bounds_a_write_the_server_does_not_read(
    redis_server: RedisServer, quick_client: Any, redis_prefix: str
) -> None:
    with paused(redis_server):
        started = time.monotonic()
        # Far more than the socket buffers hold: the write itself has to wait.
        with pytest.raises(RedisTimeoutError, match="writing"):
            await quick_client.set(f"{redis_prefix}:big", b"x" * 64_000_000)
        elapsed = time.monotonic() - started
    assert elapsed < 0.3 + 0.7
    assert await quick_client.ping() is True
    # The half-sent SET was dropped with its socket: it never runs later.
    await asyncio.sleep(0.2)
    assert await quick_client.exists(f"{redis_prefix}:big") == 0


async def test_an_outer_cancellation_is_not_turned_into_a_timeout(
    redis_server: RedisServer, quick_client: Any, redis_prefix: str
) -> None:
    with paused(redis_server):
        # An outer timeout shorter than socket_timeout wins, as itself.
        started = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            async with asyncio.timeout(0.1):
                await quick_client.get(f"{redis_prefix}:k")
        assert not isinstance(caught.value, RedisTimeoutError)
        assert time.monotonic() - started < 0.3
        # A plain cancel stays a cancel, even when it lands after socket_timeout.
        task = asyncio.ensure_future(quick_client.get(f"{redis_prefix}:k"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await quick_client.ping() is True


async def test_an_explicit_read_timeout_is_not_cut_short_by_socket_timeout(
    redis_url: str, redis_prefix: str
) -> None:
    settings = RedisSettings(url=redis_url, socket_timeout=0.2)  # type: ignore[arg-type]
    client = create_redis_client(settings)
    publisher = create_redis_client(redis_url)
    channel = f"{redis_prefix}:events"
    try:
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(channel)
            assert (await pubsub.get_message(timeout=1.0))["type"] == "subscribe"
            started = time.monotonic()
            assert await pubsub.get_message(timeout=0.5) is None  # longer than socket_timeout
            assert time.monotonic() - started >= 0.45
            await publisher.publish(channel, b"hello")
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            assert message is not None
            assert message["data"] == b"hello"
    finally:
        await client.aclose()
        await publisher.aclose()


async def test_a_cancelled_pool_waiter_leaks_no_connection(
    redis_url: str, redis_prefix: str
) -> None:
    settings = RedisSettings(url=redis_url, max_connections=1, pool_timeout=5)  # type: ignore[arg-type]
    client = create_redis_client(settings)
    try:
        holder = asyncio.ensure_future(client.blpop([f"{redis_prefix}:none"], timeout=0.3))
        await asyncio.sleep(0.05)
        waiters = [asyncio.ensure_future(client.get(f"{redis_prefix}:k")) for _ in range(3)]
        await asyncio.sleep(0.05)
        waiters[0].cancel()
        waiters[1].cancel()
        assert await holder is None
        assert await waiters[2] is None  # the released connection reached the live waiter
        assert all(w.cancelled() for w in waiters[:2])
        # One connection, still usable, many times in a row.
        assert await asyncio.gather(*(client.incr(f"{redis_prefix}:n") for _ in range(10))) == list(
            range(1, 11)
        )
    finally:
        await client.aclose()
