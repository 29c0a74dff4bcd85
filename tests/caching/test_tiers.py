"""Two-tier L1 coherence, Redis outages, Redis Cluster."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from freightscale.caching import CacheBackend
from freightscale.settings.cache import CacheSettings
from freightscale.stores.redis import RedisStore
from tests.caching.apps import RULES, Counter, build
from tests.servers import RedisServer


async def test_l1_serves_without_redis_and_stays_coherent(
    redis_url: str, redis_prefix: str
) -> None:
    s1 = RedisStore.from_url(redis_url, key_prefix=redis_prefix)
    s2 = RedisStore.from_url(redis_url, key_prefix=redis_prefix)
    a, b = CacheBackend(s1), CacheBackend(s2)
    try:
        await a.start()
        await b.start()
        await a.set("k", b"v1", expires_in=60, tags=["t"])
        assert await b.get("k") == b"v1"  # L2 read fills B's L1
        # Prove the L1 answers: remove the key behind the cache's back.
        await s2.with_namespace("cache").delete("k")
        assert await b.get("k") == b"v1"
        # A write on A evicts the key from B's L1 via pub/sub.
        await a.set("k", b"v2", expires_in=60)
        for _ in range(100):
            if await b.get("k") == b"v2":
                break
            await asyncio.sleep(0.01)
        assert await b.get("k") == b"v2"
        # So does a tag invalidation.
        await a.set("k2", b"x", expires_in=60, tags=["t2"])
        assert await b.get("k2") == b"x"
        assert await a.invalidate(["t2"]) == 1
        for _ in range(100):
            if await b.get("k2") is None:
                break
            await asyncio.sleep(0.01)
        assert await b.get("k2") is None
    finally:
        await a.aclose()
        await b.aclose()
        await s1.aclose()
        await s2.aclose()


async def test_redis_outage_bypasses_then_recovers(redis_server: RedisServer) -> None:
    counter = Counter()
    store = RedisStore.from_url(redis_server.url, key_prefix="outage", socket_timeout=0.5,
                                connect_timeout=0.5, retries=0)  # fmt: skip
    # L1 off: a hot L1 would (correctly) keep answering for up to l1_ttl.
    settings = CacheSettings(
        rules=RULES, retry_after_failure=0.2, store_timeout=1.0, l1_enabled=False
    )
    app, mw = build(counter, settings, store=store)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            await c.get("/shipments")
            assert (await c.get("/shipments")).headers["x-cache"] == "HIT"
            redis_server.stop()
            for _ in range(3):
                down = await c.get("/shipments")
                assert down.status_code == 200  # requests still succeed
                assert down.headers["x-cache"] == "BYPASS"
            assert not mw.cache.available
            redis_server.start()  # empty again: no persistence
            await asyncio.sleep(0.3)
            seen = []
            for _ in range(50):
                seen.append((await c.get("/shipments")).headers["x-cache"])
                if seen[-1] == "HIT":
                    break
                await asyncio.sleep(0.1)
            assert seen[-1] == "HIT", seen  # cached again once Redis is back
            assert mw.cache.available
    finally:
        await mw.aclose()
        await store.aclose()


@pytest.mark.slow
async def test_cluster_entries_tags_and_locks(redis_cluster_url: str, redis_prefix: str) -> None:
    counter = Counter()
    store = RedisStore.from_url(redis_cluster_url, key_prefix=redis_prefix)
    app, mw = build(counter, CacheSettings(rules=RULES), store=store)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            counter.delay = 0.1
            rs = await asyncio.gather(*(c.get("/shipments") for _ in range(50)))
            assert counter.calls["shipments"] == 1
            assert {r.status_code for r in rs} == {200}
            for i in range(5):
                await c.get(f"/shipments/{i}", headers={"authorization": "Bearer a@acme"})
            assert await mw.cache.invalidate(["tenant:acme", "shipments"]) == 6
            assert (await c.get("/shipments")).headers["x-cache"] == "MISS"
    finally:
        await mw.cache.store.delete_all()
        await mw.aclose()
        await store.aclose()


@pytest.mark.slow
async def test_cluster_l1_coherence(redis_cluster_url: str, redis_prefix: str) -> None:
    s1 = RedisStore.from_url(redis_cluster_url, key_prefix=redis_prefix)
    s2 = RedisStore.from_url(redis_cluster_url, key_prefix=redis_prefix)
    a, b = CacheBackend(s1), CacheBackend(s2)
    try:
        await a.start()
        await b.start()
        assert await a.set("k", b"v1", expires_in=60, tags=["t"])  # True: publish worked too
        assert await b.get("k") == b"v1"
        assert await a.set("k", b"v2", expires_in=60)
        for _ in range(100):
            if await b.get("k") == b"v2":
                break
            await asyncio.sleep(0.01)
        assert await b.get("k") == b"v2"
        assert await a.invalidate(["t"]) == 1
        for _ in range(100):
            if await b.get("k") is None:
                break
            await asyncio.sleep(0.01)
        assert await b.get("k") is None
    finally:
        await a.store.delete_all()
        await a.aclose()
        await b.aclose()
        await s1.aclose()
        await s2.aclose()


_OURS = ("cmdstat_info", "cmdstat_config", "cmdstat_hello", "cmdstat_client")


def _calls(server: RedisServer) -> dict[str, int]:
    import redis

    with redis.Redis.from_url(server.url) as client:
        stats = client.info("commandstats")
        client.config_resetstat()
    # Our own connection's HELLO, INFO and CONFIG RESETSTAT are left out.
    return {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in stats.items()
        if not name.startswith(_OURS)
    }


async def test_round_trips_miss_two_hit_one_invalidation_one(redis_server: RedisServer) -> None:
    # One script looks up and locks; one stores, tags and unlocks. Scripts'
    # inner commands are counted too, so the exact table pins every command.
    store = RedisStore.from_url(redis_server.url, key_prefix="rt")
    settings = CacheSettings(rules=RULES, l1_enabled=False)
    app, mw = build(Counter(), settings, store=store)
    try:
        auth = {"authorization": "Bearer a@acme"}
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=auth) as c:
            await c.get("/shipments/0")  # loads the scripts (SCRIPT LOAD once each)
            await mw.cache.invalidate(["nothing-yet"])
            _calls(redis_server)
            miss = await c.get("/shipments/1")
            assert miss.headers["x-cache"] == "MISS"
            after_miss = _calls(redis_server)
            hit = await c.get("/shipments/1")
            assert hit.headers["x-cache"] == "HIT"
            after_hit = _calls(redis_server)
            assert await mw.cache.invalidate(["shipment:1", "tenant:acme"]) == 2
            after_invalidate = _calls(redis_server)
        tags = 2  # the rule's shipment:{id} and tenant:{tenant}
        assert after_miss == {
            "evalsha": 2,  # the two round trips
            "get": 2,  # lookup; the lock check before releasing it
            "set": 2,  # the lock; the entry
            "del": 1,  # the lock's release
            "sadd": tags,
            "pexpire": tags,
        }
        assert after_hit == {"evalsha": 1, "get": 1}
        # Invalidation: one script pops both tag sets, unlinks the two entries
        # (/shipments/0 and /1 share tenant:acme) and publishes to other L1s.
        assert after_invalidate == {
            "evalsha": 1,
            "smembers": 2,
            "del": 2,
            "unlink": 1,
            "publish": 1,
        }
    finally:
        await mw.aclose()
        await store.aclose()
