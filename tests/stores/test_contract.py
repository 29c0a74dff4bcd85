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


async def test_empty_value_is_not_absent(store: Store) -> None:
    await store.set("empty", b"")
    assert await store.get("empty") == b""
    assert await store.exists("empty") is True


async def test_incr_negative_amount(store: Store) -> None:
    assert await store.incr("n", -5) == -5
    assert await store.incr("n", 2) == -3


async def test_incr_non_integer_raises_value_error(store: Store) -> None:
    await store.set("text", b"not a number")
    with pytest.raises(ValueError, match="integer"):
        await store.incr("text")
    assert await store.get("text") == b"not a number"


async def test_delete_all_reaches_nested_namespaces(store: Store) -> None:
    parent = store.with_namespace("p")
    child = parent.with_namespace("c")
    await child.set("k", b"v")
    await parent.delete_all()
    assert await child.get("k") is None


async def test_delete_all_treats_pattern_characters_literally(store: Store) -> None:
    names = ["a_b", "axb", "a%b", "a%%b", "a/b", "a\\b", "a_"]
    views = {name: store.with_namespace(name) for name in names}
    for name, view in views.items():
        await view.set("k", name.encode())
    await views["a_b"].delete_all()
    await views["a%b"].delete_all()
    await views["a/b"].delete_all()
    survivors = {name for name, view in views.items() if await view.get("k") is not None}
    assert survivors == {"axb", "a%%b", "a\\b", "a_"}


async def test_unusual_keys_roundtrip_and_stay_distinct(store: Store) -> None:
    long_a, long_b = "a" * 5000, "a" * 4999 + "b"
    keys = ["nul\x00key", "nul\x00kex", long_a, long_b, "ünïcödé 🚚", "with:colon", ""]
    for i, key in enumerate(keys):
        await store.set(key, str(i).encode())
    assert [await store.get(key) for key in keys] == [str(i).encode() for i in range(len(keys))]
    assert await store.delete(long_a) is True
    assert await store.get(long_b) == b"3"
    await store.delete_all()
    assert all([await store.get(key) is None for key in keys])
