"""The outage policy: Redis first, then fail open (local limiter) or closed (503).

:class:`FailoverBackend` bounds every Redis call by ``timeout``. On the first
failure it logs one warning, counts an outage and switches to the policy;
for ``retry_interval`` seconds after that requests do not touch Redis at all
(so none waits on a dead server), then one request tries again, and the
first success logs the recovery and returns everyone to the shared counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Literal

from limits import RateLimitItem
from redis.exceptions import RedisError

from freightscale.exceptions import StoreError, StoreUnavailableError
from freightscale.ratelimit.storage import LimitBackend, LimitState, MemoryLimitBackend
from freightscale.telemetry import get_counter

__all__ = ["FailoverBackend"]

logger = logging.getLogger("freightscale.ratelimit")
# Shared names (freightscale.telemetry.METRICS). Storage errors carry the rule in
# ``operation`` ("ratelimit:<rule>"): rule names come from configuration, so bounded.
_storage_errors = get_counter("freightscale.store.errors")  # store, operation
_outages = get_counter("freightscale.backend.outages")  # service, component
_fallbacks = get_counter("freightscale.backend.fallbacks")  # component, policy
_FAILURES = (RedisError, OSError, TimeoutError, StoreError)


class FailoverBackend:
    """Wraps a shared backend with a timeout and the fail-open/closed policy.

    Args:
        primary: the shared (Redis) backend.
        fail_mode: ``open`` (use ``fallback``) or ``closed`` (raise ``StoreUnavailableError``).
        timeout: seconds one primary call may take.
        retry_interval: seconds between attempts to use the primary during an outage.
        fallback: the local backend for ``open`` (default: a new memory backend).
        clock: monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        primary: LimitBackend,
        *,
        fail_mode: Literal["open", "closed"] = "open",
        timeout: float = 0.05,
        retry_interval: float = 1.0,
        fallback: LimitBackend | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallback = fallback if fallback is not None else MemoryLimitBackend()
        self.fail_mode = fail_mode
        self.timeout = timeout
        self.retry_interval = retry_interval
        self._clock = clock
        # A primary that bounds its own calls by (at most) our timeout — the Redis
        # backend does it once per batch of concurrent requests — needs no timer
        # per request here.
        own = getattr(primary, "timeout", None)
        self._timed_by_primary = isinstance(own, int | float) and own <= timeout
        self._down_since: float | None = None
        self._next_try = 0.0

    @property
    def degraded(self) -> bool:
        """True while the primary is considered down."""
        return self._down_since is not None

    async def hit(
        self,
        tag: str,
        items: Sequence[RateLimitItem],
        strategy: str,
        cost: int,
        *,
        rule: str = "",
    ) -> tuple[list[LimitState], bool]:
        """Hit the primary (or apply the policy); returns the states and whether degraded.

        Raises:
            StoreUnavailableError: when the primary is down and ``fail_mode`` is closed.
        """
        now = self._clock()
        if self._down_since is None or now >= self._next_try:
            try:
                if self._timed_by_primary:
                    states = await self.primary.hit(tag, items, strategy, cost)
                else:
                    async with asyncio.timeout(self.timeout):
                        states = await self.primary.hit(tag, items, strategy, cost)
            except _FAILURES as exc:
                self.record_failure(exc, rule=rule)
            else:
                self.record_success()
                return states, False
        _fallbacks.add(1, {"component": "ratelimit", "policy": self.fail_mode})
        if self.fail_mode == "closed":
            raise StoreUnavailableError(
                "rate-limit storage is unavailable and "
                "FREIGHTSCALE_RATELIMIT__FAIL_MODE is 'closed'"
            )
        return await self.fallback.hit(tag, items, strategy, cost), True

    def record_failure(self, exc: BaseException, *, rule: str = "") -> None:
        """Count a failed primary call; log and count the outage once."""
        now = self._clock()
        _storage_errors.add(1, {"store": "redis", "operation": f"ratelimit:{rule}"})
        self._next_try = now + self.retry_interval
        if self._down_since is None:
            self._down_since = now
            _outages.add(1, {"service": "redis", "component": "ratelimit"})
            logger.warning(
                "rate-limit storage unavailable (%s: %s); failing %s until it answers again "
                "(retrying every %ss)",
                type(exc).__name__,
                exc or "timed out",
                self.fail_mode,
                self.retry_interval,
            )

    def record_success(self) -> None:
        """Leave the degraded state (logging the recovery once)."""
        if self._down_since is not None:
            logger.warning(
                "rate-limit storage recovered after %.1fs; shared limits apply again",
                self._clock() - self._down_since,
            )
            self._down_since = None

    async def aclose(self) -> None:
        """Close both backends."""
        await self.fallback.aclose()
        await self.primary.aclose()
