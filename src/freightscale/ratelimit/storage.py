"""Where counters live: the shared types and the in-process backend.

Both backends answer :meth:`hit` for *all* limits of a rule at once and
return each limit's state (allowed, remaining, reset) for the headers.

- :class:`MemoryLimitBackend` drives ``limits.aio``'s strategies over its
  ``MemoryStorage`` (one process; also the fail-open fallback).
- :class:`~freightscale.ratelimit.redis_backend.RedisLimitBackend` (in
  ``redis_backend.py``) does the same in Redis with one ``EVALSHA``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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
    "LimitState",
    "MemoryLimitBackend",
    "item_suffix",
]

STRATEGY_CODES = {"fixed-window": "fw", "moving-window": "mw", "sliding-window-counter": "sw"}


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit's verdict and window after a hit.

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


class MemoryLimitBackend:
    """Counters in this process, through ``limits.aio`` strategies."""

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
        limiter = self._limiters[strategy]
        storage = self.storage
        states = []
        ok = True
        for item in items:
            allowed = True  # limits after a refusal are not attempted, nor blamed
            if strategy == "fixed-window":
                # FixedWindowRateLimiter.hit / get_window_stats on one key: the count
                # incr returns is what get would read, so skip that call.
                key, expiry = item.key_for(tag), item.get_expiry()
                if ok:
                    count = await storage.incr(key, expiry, amount=cost)
                    allowed = ok = count <= item.amount
                else:
                    count = await storage.get(key)
                reset = await storage.get_expiry(key)
                states.append(LimitState(item, allowed, max(0, item.amount - count), reset))
                continue
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
