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


@pytest.fixture(params=["memory"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A fresh, empty store of each backend kind."""
    if request.param == "memory":
        mem = MemoryStore(max_entries=1000)
        yield mem.with_namespace("test")
        await mem.aclose()
