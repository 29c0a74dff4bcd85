"""The ``store`` fixture: one contract, run over every backend.

Each backend is one entry of ``BACKENDS``: the (sync) service fixtures it
needs, resolved outside the event loop, and an async context manager that
opens a fresh, empty store from their values and closes it afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Backend:
    """How the ``store`` fixture opens one backend."""

    fixtures: tuple[str, ...]
    open: Callable[[dict[str, Any]], AbstractAsyncContextManager[Store]]


@asynccontextmanager
async def _memory(_services: dict[str, Any]) -> AsyncIterator[Store]:
    mem = MemoryStore(max_entries=1000)
    yield mem.with_namespace("test")
    await mem.aclose()


@asynccontextmanager
async def _postgres(services: dict[str, Any]) -> AsyncIterator[Store]:
    from freightscale.stores.postgres import PostgresStore

    root = PostgresStore.from_url(services["database_url"], sweep_interval=None)
    view = root.with_namespace(f"t{uuid.uuid4().hex[:12]}")
    try:
        yield view
        await view.delete_all()
    finally:
        await root.aclose()


@asynccontextmanager
async def _redis(services: dict[str, Any]) -> AsyncIterator[Store]:
    from freightscale.stores.redis import RedisStore

    url = services.get("redis_url") or services["redis_cluster_url"]
    root = RedisStore.from_url(url, key_prefix=services["redis_prefix"])
    view = root.with_namespace("test")
    try:
        yield view
        await view.delete_all()
    finally:
        await root.aclose()


BACKENDS: dict[str, Backend] = {
    "memory": Backend((), _memory),
    "redis": Backend(("redis_url", "redis_prefix"), _redis),
    "redis-cluster": Backend(("redis_cluster_url", "redis_prefix"), _redis),
    "postgres": Backend(("database_url",), _postgres),
}


@pytest.fixture(params=list(BACKENDS))
def store_backend(request: pytest.FixtureRequest) -> tuple[Backend, dict[str, Any]]:
    """The backend under test and its resolved service fixtures."""
    backend = BACKENDS[request.param]
    return backend, {name: request.getfixturevalue(name) for name in backend.fixtures}


@pytest.fixture
async def store(store_backend: tuple[Backend, dict[str, Any]]) -> AsyncIterator[Store]:
    """A fresh, empty store of each backend kind."""
    backend, services = store_backend
    async with backend.open(services) as opened:
        yield opened
