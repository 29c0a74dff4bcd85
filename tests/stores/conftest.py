"""The ``store`` fixture: one contract, run over every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from freightscale.stores import MemoryStore, Store


class FakeClock:
    """A manual clock for the memory store (not a fake of any service)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A fresh, empty store of each backend kind, under a namespace unique to the test."""
    root: Store
    if request.param == "memory":
        root = MemoryStore(max_entries=1000)
        yield root.with_namespace("test")
    elif request.param in ("redis", "redis-cluster"):
        from freightscale.stores.redis import RedisStore

        fixture = "redis_url" if request.param == "redis" else "redis_cluster_url"
        url = request.getfixturevalue(fixture)
        prefix = request.getfixturevalue("redis_prefix")
        root = RedisStore.from_url(url, key_prefix=prefix)
        view = root.with_namespace("test")
        yield view
        await view.delete_all()
    else:  # pragma: no cover
        raise AssertionError(request.param)
    await root.aclose()
