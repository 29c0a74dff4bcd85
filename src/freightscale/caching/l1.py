"""The in-process L1: a small LRU bounded by bytes, holding bytes and their decoded form.

A hit in L1 costs a dict lookup: no network round trip and, because the
decoded object is kept next to its bytes, no decoding either. Entries
expire after at most ``ttl`` seconds, which bounds staleness if an
invalidation message is ever lost.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["L1Cache"]

_OVERHEAD = 200  # rough per-entry bookkeeping, so tiny values are bounded too


class L1Cache:
    """LRU of ``key -> (bytes, decoded object)`` bounded by total bytes.

    Args:
        max_bytes: bound of the sum of value sizes (+ a per-entry overhead).
        ttl: longest an entry lives.
        clock: monotonic clock (tests inject one).
    """

    def __init__(self, max_bytes: int, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._data: OrderedDict[str, list[Any]] = OrderedDict()  # [expires, bytes, obj]
        self.size = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> list[Any] | None:
        """Return ``[expires_at, value, decoded]`` for a live key, or None."""
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            self.pop(key)
            return None
        self._data.move_to_end(key)
        return item

    def put(self, key: str, value: bytes, ttl: float | None = None, decoded: Any = None) -> None:
        """Keep ``value`` for ``min(ttl, self.ttl)`` seconds, evicting least recently used."""
        cost = len(value) + _OVERHEAD
        self.pop(key)
        if cost > self.max_bytes:
            return
        lifetime = self.ttl if ttl is None else min(ttl, self.ttl)
        self._data[key] = [self._clock() + lifetime, value, decoded]
        self.size += cost
        while self.size > self.max_bytes:
            _, old = self._data.popitem(last=False)
            self.size -= len(old[1]) + _OVERHEAD

    def pop(self, key: str) -> None:
        """Forget ``key``."""
        item = self._data.pop(key, None)
        if item is not None:
            self.size -= len(item[1]) + _OVERHEAD

    def clear(self) -> None:
        """Forget everything."""
        self._data.clear()
        self.size = 0
