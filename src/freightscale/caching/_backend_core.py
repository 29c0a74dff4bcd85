"""The plumbing under :class:`~freightscale.caching.backend.CacheBackend`.

Binding the store (now or on first use), the outage policy every store call
goes through, the in-process L1 kept coherent by pub/sub, and the
cross-instance fill locks. The entry and tag operations built on these are
in :mod:`freightscale.caching.backend`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cachetools import TTLCache
from redis.exceptions import RedisError

from freightscale.caching.cdn import PurgeDispatcher, PurgeHook, purge_hook_from
from freightscale.caching.l1 import L1Cache
from freightscale.caching.tiers import RedisCacheOps
from freightscale.exceptions import StoreError, StoreUnavailableError
from freightscale.settings.cache import CacheSettings
from freightscale.stores.base import Store
from freightscale.stores.memory import MemoryStore
from freightscale.stores.redis import RedisStore
from freightscale.telemetry import get_counter

logger = logging.getLogger("freightscale.caching")
_store_errors = get_counter("freightscale.store.errors")  # store, operation
_outages = get_counter("freightscale.backend.outages")  # service, component
_ERROR_LABELS = {"store": "cache", "operation": "cache"}
T = TypeVar("T")


class _BackendCore:
    """Store binding, outage policy, L1 and fill locks of a ``CacheBackend``.

    Takes the arguments documented on :class:`~freightscale.caching.backend.CacheBackend`.
    """

    store: Store
    redis: RedisCacheOps | None
    l1: L1Cache | None

    def __init__(
        self,
        store: Store | Callable[[], Store] | None = None,
        settings: CacheSettings | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        purge: PurgeHook | None = None,
    ) -> None:
        self.settings = settings = settings or CacheSettings()
        self.cdn: PurgeDispatcher | None = None
        self.set_purge_hook(purge_hook_from(settings, purge))
        self._monotonic = monotonic
        # Memory-store tag index: tag -> keys, bounded in tags and by age.
        self._tags: TTLCache[str, set[str]] = TTLCache(
            maxsize=100_000, ttl=settings.tag_index_ttl, timer=monotonic
        )
        self._down_until = 0.0
        self._outage = False
        self._factory: Callable[[], Store] | None = None
        self.redis = self.l1 = None
        if store is None:
            store = MemoryStore(max_bytes=settings.memory_max_bytes)
        if isinstance(store, Store):
            self._bind(store)
        else:
            self._factory = store

    def set_purge_hook(self, hook: PurgeHook | None) -> None:
        """Set (or, with None, remove) the CDN purge hook."""
        self.cdn = PurgeDispatcher(hook) if hook is not None else None

    def _bind(self, store: Store) -> None:
        settings = self.settings
        self.root = store
        self.store = store.with_namespace(settings.namespace)
        if isinstance(self.store, RedisStore):
            self.redis = RedisCacheOps(
                self.store, tag_ttl=settings.tag_index_ttl, lock_ttl=settings.lock_ttl
            )
            if settings.l1_enabled:
                self.l1 = L1Cache(settings.l1_max_bytes, settings.l1_ttl, self._monotonic)

    def _ensure(self) -> None:
        if self._factory is not None:
            factory, self._factory = self._factory, None
            self._bind(factory())

    def __repr__(self) -> str:
        if self._factory is not None:
            return "CacheBackend(store=<not opened yet>)"
        return f"CacheBackend(store={self.store!r}, l1={self.l1 is not None})"

    # -- outage policy ---------------------------------------------------

    async def _guard(self, operation: Callable[[], Awaitable[T]]) -> T:
        if self._down_until and self._monotonic() < self._down_until:
            raise StoreUnavailableError("cache store is unavailable; bypassing the cache")
        try:
            async with asyncio.timeout(self.settings.store_timeout):
                result = await operation()
        except (StoreError, RedisError, TimeoutError, OSError) as exc:
            # RedisError: pipelines and scripts run outside RedisStore's own translation.
            self._failed(exc)
            raise StoreUnavailableError(f"cache store failed: {exc!r}") from exc
        if self._outage:
            self._outage = False
            self._down_until = 0.0
            logger.warning("response cache store is back; caching again")
        return result

    def _failed(self, exc: BaseException) -> None:
        _store_errors.add(1, _ERROR_LABELS)
        self._down_until = self._monotonic() + self.settings.retry_after_failure
        if not self._outage:
            self._outage = True
            service = "redis" if self.redis is not None else type(self.store).__name__
            _outages.add(1, {"service": service, "component": "cache"})
            logger.warning(
                "response cache store failed (%r); bypassing the cache, retrying every %ss",
                exc,
                self.settings.retry_after_failure,
            )

    @property
    def available(self) -> bool:
        """False while the cache is bypassed after a store failure."""
        return not self._outage

    # -- L1 ----------------------------------------------------------------

    def _l1_live(self) -> bool:
        self._ensure()
        if self.l1 is None or self.redis is None:
            return False
        self.redis.start_listener(self._evict_local, self._clear_local)
        return self.redis.subscribed.is_set()

    def _from_l1(self, key: str) -> tuple[L1Cache | None, bytes | None]:
        """The live L1 (None while it cannot be trusted) and what it holds for ``key``."""
        l1 = self.l1 if self._l1_live() else None
        if l1 is not None:
            item = l1.get(key)
            if item is not None:
                value: bytes = item[1]
                return l1, value
        return l1, None

    def _evict_local(self, keys: list[str]) -> None:
        if self.l1 is not None:
            for key in keys:
                self.l1.pop(key)

    def _clear_local(self) -> None:
        if self.l1 is not None:
            self.l1.clear()

    def peek(self, key: str) -> Any:
        """Return the decoded object kept in L1 for ``key`` (see :meth:`remember`), or None.

        Synchronous and free of I/O: the hot path of an L1 hit.
        """
        if self.l1 is None or not self._l1_live():
            return None
        item = self.l1.get(key)
        return item[2] if item is not None else None

    def remember(self, key: str, decoded: Any) -> None:
        """Attach the decoded form of ``key``'s L1 value, so later hits skip decoding."""
        if self.l1 is not None:
            item = self.l1.get(key)
            if item is not None:
                item[2] = decoded

    async def start(self, timeout: float = 5.0) -> None:
        """Start the L1 invalidation listener now and wait until it listens."""
        self._ensure()
        if self.l1 is not None and self.redis is not None:
            self._l1_live()
            async with asyncio.timeout(timeout):
                await self.redis.subscribed.wait()

    # -- fill locks ----------------------------------------------------------

    async def lock(self, key: str) -> str | None:
        """Try the cross-instance fill lock; its token, "" if the store is down, or None.

        A down store grants the lock (fail open: the handler runs).
        """
        self._ensure()
        try:
            if self.redis is not None:
                return await self._guard(lambda: self.redis.lock(key))  # type: ignore[union-attr]
            count = await self._guard(
                lambda: self.store.incr("l:" + key, expires_in=self.settings.lock_ttl)
            )
        except StoreUnavailableError:
            return ""
        return "1" if count == 1 else None

    async def unlock(self, key: str, token: str) -> None:
        """Release a lock taken with :meth:`lock` (errors are ignored: it expires)."""
        self._ensure()
        if not token:
            return
        try:
            if self.redis is not None:
                await self._guard(lambda: self.redis.unlock(key, token))  # type: ignore[union-attr]
            else:
                await self._guard(lambda: self.store.delete("l:" + key))
        except StoreUnavailableError:
            pass
