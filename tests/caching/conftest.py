"""Fixtures: a cache store per backend kind, and a manual wall clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from freightscale.stores import MemoryStore, Store


class Clock:
    """A manual wall clock (not a fake of any service)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A fresh root store of each kind (Redis keys under the test's unique prefix)."""
    root: Store
    if request.param == "memory":
        root = MemoryStore(max_bytes=8 * 1024 * 1024)
        yield root
    else:
        from freightscale.stores.redis import RedisStore

        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        root = RedisStore.from_url(url, key_prefix=prefix)
        yield root
    await root.aclose()
