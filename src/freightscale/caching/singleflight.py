"""In-process single flight: concurrent misses for one key run the handler once.

The first caller of a key is the leader; later callers get the leader's
future and wait for its result (a cache entry, or None when the response was
not shareable, in which case each follower runs the handler itself).
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Leader election and result sharing per key, within one event loop."""

    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Future[T | None]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def join(self, key: str) -> tuple[asyncio.Future[T | None], bool]:
        """Return the key's future and whether the caller leads (must call :meth:`finish`)."""
        future = self._calls.get(key)
        if future is not None:
            return future, False
        future = asyncio.get_running_loop().create_future()
        self._calls[key] = future
        return future, True

    def finish(self, key: str, result: T | None) -> None:
        """Publish the leader's result (idempotent) and end the flight."""
        future = self._calls.pop(key, None)
        if future is not None and not future.done():
            future.set_result(result)

    @staticmethod
    async def wait(future: asyncio.Future[T | None]) -> T | None:
        """Wait for a leader's result; a follower's cancellation never cancels the leader."""
        return await asyncio.shield(future)
