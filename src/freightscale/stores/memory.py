"""In-process memory store: bounded, with an injectable clock.

For tests, one-process apps and the embedded default. Bounded by entry
count or by total value bytes (least recently used evicted first) through
cachetools' TLRU cache, which also expires entries by their own deadline.
Operations never await, so each is atomic within the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from cachetools import TLRUCache

from freightscale.stores.base import Store, join_namespace, store_bytes

__all__ = ["MemoryStore"]

_NEVER = float("inf")


class _Entry(NamedTuple):
    value: bytes
    expires_at: float


def _ttu(_key: str, entry: _Entry, _now: float) -> float:
    return entry.expires_at


def _entry_size(entry: _Entry) -> int:
    # A rough per-entry overhead keeps "by bytes" honest for tiny values.
    return len(entry.value) + 64


class MemoryStore:
    """A bounded in-process :class:`~freightscale.stores.Store`.

    Args:
        max_entries: most entries kept (ignored when ``max_bytes`` is given).
        max_bytes: bound the total size of values instead of their count.
        clock: monotonic clock in seconds; tests inject a fake one.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        *,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        namespace: str = "",
        _data: TLRUCache[str, _Entry] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.namespace = namespace
        self._clock = clock
        if _data is None:
            if max_bytes is not None:
                _data = TLRUCache(max_bytes, _ttu, timer=clock, getsizeof=_entry_size)
            else:
                _data = TLRUCache(max_entries, _ttu, timer=clock)
        self._data = _data
        self._prefix = f"{namespace}:" if namespace else ""

    def __repr__(self) -> str:
        return f"MemoryStore(namespace={self.namespace!r}, entries={len(self._data)})"

    def _live(self, key: str) -> _Entry | None:
        entry = self._data.get(self._prefix + key)
        if entry is None or entry.expires_at <= self._clock():
            return None
        return entry

    async def get(self, key: str) -> bytes | None:
        """Return the value under ``key``, or None."""
        entry = self._live(key)
        return entry.value if entry is not None else None

    async def set(self, key: str, value: bytes, *, expires_in: float | None = None) -> None:
        """Store ``value`` under ``key``."""
        value = store_bytes(value)
        deadline = _NEVER if expires_in is None else self._clock() + expires_in
        if expires_in is not None and expires_in <= 0:
            self._data.pop(self._prefix + key, None)
            return
        try:
            self._data[self._prefix + key] = _Entry(value, deadline)
        except ValueError:
            # cachetools refuses a single value larger than the whole bound:
            # such a value is simply not kept, like any other eviction.
            self._data.pop(self._prefix + key, None)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; return True if it held a live value."""
        existed = self._live(key) is not None
        self._data.pop(self._prefix + key, None)
        return existed

    async def exists(self, key: str) -> bool:
        """Return True if ``key`` holds a live value."""
        return self._live(key) is not None

    async def expires_in(self, key: str) -> float | None:
        """Seconds until ``key`` expires, or None."""
        entry = self._live(key)
        if entry is None or entry.expires_at == _NEVER:
            return None
        return entry.expires_at - self._clock()

    async def incr(self, key: str, amount: int = 1, *, expires_in: float | None = None) -> int:
        """Add ``amount`` to the counter under ``key`` (created at 0 if absent)."""
        entry = self._live(key)
        if entry is None:
            value = amount
            deadline = _NEVER if expires_in is None else self._clock() + expires_in
        else:
            try:
                value = int(entry.value) + amount
            except ValueError:
                raise ValueError(f"value under {key!r} is not an integer") from None
            deadline = entry.expires_at
        self._data[self._prefix + key] = _Entry(str(value).encode(), deadline)
        return value

    async def delete_all(self) -> None:
        """Remove every key in this namespace."""
        if not self._prefix:
            self._data.clear()
            return
        for full_key in [k for k in self._data if k.startswith(self._prefix)]:
            self._data.pop(full_key, None)

    async def check(self) -> None:
        """Always healthy."""

    async def aclose(self) -> None:
        """Nothing to release."""

    def with_namespace(self, namespace: str) -> Store:
        """Return a view under ``namespace`` sharing this store's data and bound."""
        return MemoryStore(
            clock=self._clock,
            namespace=join_namespace(self.namespace, namespace),
            _data=self._data,
        )
