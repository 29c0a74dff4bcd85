"""Where counters live: the shared types and the in-process backend.

Both backends answer :meth:`hit` for *all* limits of a rule at once and
return each limit's state (allowed, remaining, reset) for the headers.

- :class:`MemoryLimitBackend` drives ``limits.aio``'s strategies over its
  ``MemoryStorage`` (one process; also the fail-open fallback).
- :class:`~freightscale.ratelimit.redis_backend.RedisLimitBackend` (in
  ``redis_backend.py``) does the same in Redis with one ``EVALSHA``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

__all__ = [
    "STRATEGY_CODES",
    "LimitBackend",
    "LimitSpec",
    "LimitState",
    "MemoryLimitBackend",
    "item_suffix",
    "limit_specs",
]

STRATEGY_CODES = {"fixed-window": "fw", "moving-window": "mw", "sliding-window-counter": "sw"}


class LimitState(NamedTuple):
    """One limit's verdict and window after a hit (immutable; cheap to build per request).

    Attributes:
        item: the limit.
        allowed: False when this limit refused the request.
        remaining: units left in the window (never negative).
        reset_at: epoch seconds when the window frees capacity.
    """

    item: RateLimitItem
    allowed: bool
    remaining: int
    reset_at: float


class LimitBackend(Protocol):
    """Checks and consumes several limits of one rule for one key."""

    async def hit(
        self, tag: str, items: Sequence[RateLimitItem], strategy: str, cost: int
    ) -> list[LimitState]:
        """Consume ``cost`` from every limit (stopping at the first refusal)."""
        ...

    async def aclose(self) -> None:
        """Release connections and tasks."""
        ...


class LimitSpec(NamedTuple):
    """What the backends need of one limit, computed once per limits tuple.

    Attributes:
        item: the limit.
        amount: its quota.
        expiry: its window in seconds.
        suffix: the part of a key that names it (``100/1/second``, see :func:`item_suffix`).
        namespace: the item's ``limits`` namespace (the first part of ``item.key_for``).
    """

    item: RateLimitItem
    amount: int
    expiry: int
    suffix: str
    namespace: str


_SPECS: dict[int, tuple[Sequence[RateLimitItem], tuple[LimitSpec, ...]]] = {}
_MAX_SPECS = 4096


def limit_specs(items: Sequence[RateLimitItem]) -> tuple[LimitSpec, ...]:
    """The specs of ``items``; a tuple's are cached by its identity.

    A rule's limits (and a cached tenant plan) are the same tuple on every
    request, so the per-request cost is one dict lookup. The cache holds a
    reference to each tuple it keys, so an id is never reused while cached;
    other sequences (which may change) are read afresh.
    """
    entry = _SPECS.get(id(items))
    if entry is not None and entry[0] is items:
        return entry[1]
    specs = tuple(
        LimitSpec(i, i.amount, i.get_expiry(), item_suffix(i), i.namespace) for i in items
    )
    if type(items) is tuple:
        if len(_SPECS) >= _MAX_SPECS:
            _SPECS.clear()
        _SPECS[id(items)] = (items, specs)
    return specs


class MemoryLimitBackend:
    """Counters in this process, through ``limits.aio``'s ``MemoryStorage``.

    Fixed windows call the storage's ``incr`` directly (what
    ``FixedWindowRateLimiter.hit`` does) and read the window's end from the
    storage's expiry table (what ``get_window_stats`` would await for); the
    other strategies go through ``limits``' rate limiters.
    """

    def __init__(self) -> None:
        self.storage = MemoryStorage()
        self._limiters: dict[str, RateLimiter] = {
            "fixed-window": FixedWindowRateLimiter(self.storage),
            "moving-window": MovingWindowRateLimiter(self.storage),
            "sliding-window-counter": SlidingWindowCounterRateLimiter(self.storage),
        }

    async def hit(
        self, tag: str, items: Sequence[RateLimitItem], strategy: str, cost: int
    ) -> list[LimitState]:
        """See :meth:`LimitBackend.hit`."""
        storage = self.storage
        states = []
        ok = True
        if strategy == "fixed-window":
            # One storage call per limit: the count incr returns is what
            # get_window_stats would read, and MemoryStorage.get_expiry(key) is
            # this lookup of its expiry table (set by incr), without an await.
            expirations = storage.expirations
            for spec in limit_specs(items):
                key = f"{spec.namespace}/{tag}/{spec.suffix}"  # spec.item.key_for(tag)
                if ok:
                    count = await storage.incr(key, spec.expiry, amount=cost)
                    allowed = ok = count <= spec.amount
                else:  # limits after a refusal are not attempted, nor blamed
                    allowed = True
                    count = await storage.get(key)
                reset = expirations.get(key) or time.time()
                states.append(LimitState(spec.item, allowed, max(0, spec.amount - count), reset))
            return states
        limiter = self._limiters[strategy]
        for item in items:
            allowed = True
            if ok:
                allowed = ok = await limiter.hit(item, tag, cost=cost)
            stats = await limiter.get_window_stats(item, tag)
            states.append(LimitState(item, allowed, max(0, stats.remaining), stats.reset_time))
        return states

    async def aclose(self) -> None:
        """Stop ``MemoryStorage``'s expiry timer."""
        timer = self.storage.timer
        if timer is not None and not timer.done():
            timer.cancel()


def item_suffix(item: RateLimitItem) -> str:
    """The part of a Redis key that names one limit (``100/1/second``)."""
    return f"{item.amount}/{item.multiples}/{item.GRANULARITY.name}"
