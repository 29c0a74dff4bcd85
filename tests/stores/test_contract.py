"""The Store contract, run over every backend (memory, redis, postgres)."""

from __future__ import annotations

import asyncio

import pytest

from freightscale.stores import Store


async def test_get_missing_is_none(store: Store) -> None:
    assert await store.get("absent") is None
    assert await store.exists("absent") is False
    assert await store.expires_in("absent") is None


async def test_set_get_roundtrip_bytes(store: Store) -> None:
    payload = bytes(range(256))
    await store.set("k", payload)
    assert await store.get("k") == payload
    assert await store.exists("k") is True
    assert await store.expires_in("k") is None


async def test_set_overwrites(store: Store) -> None:
    await store.set("k", b"one")
    await store.set("k", b"two")
    assert await store.get("k") == b"two"


async def test_delete_reports_existence(store: Store) -> None:
    await store.set("k", b"v")
    assert await store.delete("k") is True
    assert await store.delete("k") is False
    assert await store.get("k") is None


async def test_expires_in_reports_ttl(store: Store) -> None:
    await store.set("k", b"v", expires_in=60)
    remaining = await store.expires_in("k")
    assert remaining is not None
    assert 55 <= remaining <= 60


async def test_incr_counts_atomically(store: Store) -> None:
    results = await asyncio.gather(*(store.incr("counter") for _ in range(50)))
    assert sorted(results) == list(range(1, 51))
    assert await store.incr("counter", 10) == 60
    assert await store.get("counter") == b"60"


async def test_incr_sets_expiry_only_on_create(store: Store) -> None:
    assert await store.incr("c", expires_in=100) == 1
    first = await store.expires_in("c")
    assert first is not None
    assert first <= 100
    await store.incr("c", expires_in=1000)
    second = await store.expires_in("c")
    assert second is not None
    assert second <= 100


async def test_namespaces_are_isolated(store: Store) -> None:
    a = store.with_namespace("a")
    b = store.with_namespace("b")
    await a.set("k", b"from-a")
    await b.set("k", b"from-b")
    assert await a.get("k") == b"from-a"
    assert await b.get("k") == b"from-b"
    assert await store.get("k") is None
    await a.delete_all()
    assert await a.get("k") is None
    assert await b.get("k") == b"from-b"


async def test_delete_all_clears_namespace(store: Store) -> None:
    for i in range(30):
        await store.set(f"k{i}", b"v")
    await store.delete_all()
    assert all([await store.get(f"k{i}") is None for i in range(30)])


async def test_check_passes_when_healthy(store: Store) -> None:
    await store.check()


async def test_bad_namespace_rejected(store: Store) -> None:
    with pytest.raises(ValueError, match="namespace"):
        store.with_namespace("a*")
