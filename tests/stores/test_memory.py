"""Behaviour specific to the memory store: bounds and the injected clock."""

from __future__ import annotations

import pytest

from freightscale.stores import MemoryStore
from tests.stores.conftest import FakeClock


async def test_expiry_follows_injected_clock() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    await store.set("k", b"v", expires_in=10)
    clock.advance(9.5)
    assert await store.get("k") == b"v"
    assert await store.expires_in("k") == 0.5
    clock.advance(1)
    assert await store.get("k") is None
    assert await store.exists("k") is False


async def test_bounded_by_entries_evicts_least_recently_used() -> None:
    store = MemoryStore(max_entries=3)
    for key in ("a", "b", "c"):
        await store.set(key, b"v")
    await store.get("a")
    await store.set("d", b"v")
    assert await store.get("b") is None
    assert await store.get("a") == b"v"
    assert await store.get("d") == b"v"


async def test_bounded_by_bytes() -> None:
    store = MemoryStore(max_bytes=10_000)
    for i in range(100):
        await store.set(f"k{i}", b"x" * 1000)
    kept = [i for i in range(100) if await store.get(f"k{i}") is not None]
    assert 0 < len(kept) < 10
    assert kept[-1] == 99
    await store.set("huge", b"x" * 20_000)
    assert await store.get("huge") is None


async def test_non_bytes_value_rejected() -> None:
    store = MemoryStore()
    with pytest.raises(TypeError, match="bytes"):
        await store.set("k", "text")  # type: ignore[arg-type]
