"""Approximate mode: decide locally, reconcile with Redis in the background.

The idea behind Kong's ``sync_rate``: each process keeps, per key and limit,
the last global count it read from Redis plus the hits it admitted since.
A request is decided from those two numbers with no network call; every
``sync_interval`` a background task pushes the local hits to Redis (``INCRBY``
on ``limits``' fixed-window key layout, expiry set on the first increment as
``limits``' ``incr_expire`` script does) and reads back the global count and
window TTL, in one pipeline.

Worst case: between two syncs every process may admit up to what it
believes is left, so with ``N`` processes a window admits at most
``limit + (N - 1) * min(limit, r * (sync_interval + rtt))`` requests, where
``r`` is the per-process request rate — never more than ``N * limit``. One
process alone is exact (its own hits are always counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from limits import RateLimitItem

from freightscale.backends.redis import RedisClient, ensure_ready
from freightscale.ratelimit.fallback import FailoverBackend
from freightscale.ratelimit.storage import LimitState, limit_specs

__all__ = ["ApproximateCounters"]


@dataclass(slots=True)
class _Counter:
    expiry: int
    reset_at: float
    known: int = 0  # global count at the last sync (includes our synced hits)
    pending: int = 0  # admitted here, not yet sent
    inflight: int = 0  # sent, reply not yet received


class ApproximateCounters:
    """Local fixed-window counters reconciled with Redis every ``sync_interval``.

    Args:
        client: the redis-py asyncio client.
        prefix: key prefix (shared with the exact backend's layout).
        sync_interval: seconds between reconciliations.
        max_keys: most counters kept; the oldest idle ones are dropped beyond it.
        failover: records sync failures (outage log, metric) and recoveries.
        clock: wall clock (injectable for tests).
    """

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        *,
        sync_interval: float = 0.05,
        max_keys: int = 100_000,
        failover: FailoverBackend | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.sync_interval = sync_interval
        self.max_keys = max_keys
        self.failover = failover
        self._clock = clock
        self._counters: dict[str, _Counter] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def hit(self, tag: str, items: Sequence[RateLimitItem], cost: int) -> list[LimitState]:
        """Decide locally (no I/O, no await); all limits must allow, and then all are consumed."""
        task = self._task
        if task is None or task.done():
            self._ensure_task()
        now = self._clock()
        base = f"{self.prefix}:{{{tag}}}/"
        counters = self._counters
        specs = limit_specs(items)
        if len(specs) == 1:  # the common case, without the lists
            spec = specs[0]
            c = counters.get(base + spec.suffix)
            if c is None or now >= c.reset_at:
                c = self._counter(base + spec.suffix, spec.expiry, now)
            used = c.known + c.pending + c.inflight
            allowed = used + cost <= spec.amount
            if allowed:
                c.pending += cost
                used += cost
            return [LimitState(spec.item, allowed, max(0, spec.amount - used), c.reset_at)]
        found = [(spec, self._counter(base + spec.suffix, spec.expiry, now)) for spec in specs]
        ok = all(c.known + c.pending + c.inflight + cost <= spec.amount for spec, c in found)
        states = []
        for spec, c in found:
            used = c.known + c.pending + c.inflight
            allowed = used + cost <= spec.amount
            if ok:
                c.pending += cost
                used += cost
            states.append(LimitState(spec.item, allowed, max(0, spec.amount - used), c.reset_at))
        return states

    def _counter(self, key: str, expiry: int, now: float) -> _Counter:
        counter = self._counters.get(key)
        if counter is None:
            if len(self._counters) >= self.max_keys:
                self._evict(now)
            counter = self._counters[key] = _Counter(expiry, now + expiry)
        elif now >= counter.reset_at:
            # The window ended: start a new one locally; the next sync confirms it.
            counter.known = 0
            counter.pending = 0
            counter.reset_at = now + counter.expiry
        return counter

    def _evict(self, now: float) -> None:
        idle = [k for k, c in self._counters.items() if not (c.pending or c.inflight)]
        expired = [k for k in idle if self._counters[k].reset_at <= now]
        for key in expired or idle[: max(1, len(idle) // 10)]:
            del self._counters[key]

    def _ensure_task(self) -> None:
        if (self._task is None or self._task.done()) and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await ensure_ready(self.client)
        except Exception as exc:  # Redis down at first use: retried on a later hit
            if self.failover is not None:
                self.failover.record_failure(exc, rule="approximate")
            return
        # The flag, not only cancel(): a driver that swallows a cancellation
        # mid-command must not keep this loop alive after aclose().
        while not self._closed:
            await asyncio.sleep(self.sync_interval)
            await self.sync()

    async def sync(self) -> None:
        """Push local hits and pull global counts for every live counter (one pipeline)."""
        now = self._clock()
        live = []
        for key, c in list(self._counters.items()):
            if c.reset_at <= now and not (c.pending or c.inflight):
                del self._counters[key]
                continue
            live.append((key, c, c.pending))
            c.inflight += c.pending
            c.pending = 0
        if not live:
            return
        pipe = self.client.pipeline(transaction=False)
        for key, c, sent in live:
            if sent:
                pipe.incrby(key, sent)
                pipe.expire(key, c.expiry, nx=True)
            else:
                pipe.get(key)
                pipe.exists(key)  # keeps the reply shape of the branch above
            pipe.pttl(key)
        timeout = self.failover.timeout if self.failover else 1.0
        try:
            async with asyncio.timeout(max(timeout, self.sync_interval, 0.5)):
                replies = await pipe.execute()
        except Exception as exc:
            for _, c, sent in live:
                c.inflight -= sent
                c.pending += sent
            if self.failover is not None:
                self.failover.record_failure(exc, rule="approximate")
            return
        if self.failover is not None:
            self.failover.record_success()
        for n, (_, c, sent) in enumerate(live):
            count, pttl = replies[3 * n], replies[3 * n + 2]
            c.inflight -= sent
            c.known = int(count or 0)
            if pttl is not None and int(pttl) > 0:
                c.reset_at = now + int(pttl) / 1000

    async def aclose(self) -> None:
        """Stop the sync task after one last sync."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=max(1.0, 2 * self.sync_interval))
            self._task = None
            with contextlib.suppress(Exception):
                await self.sync()
