"""``CacheBackend``: the store behind the response and query-result caches.

One object owns the entries, the tag index, the fill locks, the optional
in-process L1 and the outage policy:

- **Stores**: any :class:`~freightscale.stores.Store`. With a ``RedisStore``
  (single node or Cluster) tags are Redis sets, locks are ``SET NX PX`` and,
  when ``l1_enabled``, a bounded in-process L1 sits in front, kept coherent
  by pub/sub messages (a write or an invalidation on one instance evicts the
  key from every other instance's L1). With a ``MemoryStore`` tags live in a
  bounded in-process index.
- **Outages**: a failing or slow store (``store_timeout``) makes the cache
  step aside: reads raise :class:`StoreUnavailableError` (the middleware
  bypasses), writes are dropped, it is logged once per outage and counted,
  and the store is tried again after ``retry_after_failure`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
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

__all__ = ["CacheBackend"]

logger = logging.getLogger("freightscale.caching")
_store_errors = get_counter("freightscale.store.errors")  # store, operation
_outages = get_counter("freightscale.backend.outages")  # service, component
_ERROR_LABELS = {"store": "cache", "operation": "cache"}
T = TypeVar("T")


class CacheBackend:
    """Entries, tags, locks and L1 for the caches.

    Args:
        store: where entries live (a view under ``settings.namespace`` is used),
            or a zero-argument callable returning it, called on first use (for
            a store whose client opens at startup, like ``stack.store(...)``).
            Default: a ``MemoryStore`` bounded by ``memory_max_bytes``.
        settings: the cache settings section.
        monotonic: clock for the outage back-off (tests inject one).
        purge: CDN purge hook called with the tags of every invalidation
            (default: an :class:`~freightscale.caching.cdn.HttpPurger` when
            ``cdn_purge_url`` is set, else none).
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

    # -- entries -----------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """Return the bytes under ``key`` (L1 first), or None.

        Raises:
            StoreUnavailableError: the store is down (callers bypass the cache).
        """
        l1 = self.l1 if self._l1_live() else None
        if l1 is not None:
            item = l1.get(key)
            if item is not None:
                value: bytes = item[1]
                return value
        stored = await self._guard(lambda: self.store.get(key))
        if stored is not None and l1 is not None:
            l1.put(key, stored)
        return stored

    async def get_or_lock(self, key: str) -> tuple[bytes | None, str | None]:
        """Look ``key`` up; if it is absent, try its fill lock in the same step.

        Returns ``(value, None)`` when stored (L1 first), ``(None, token)``
        when absent and this caller took the lock (fill it with :meth:`fill`,
        which releases it), ``(None, None)`` when absent and another caller
        holds the lock. With Redis this is one round trip.

        Raises:
            StoreUnavailableError: the store is down (callers bypass the cache).
        """
        l1 = self.l1 if self._l1_live() else None
        if l1 is not None:
            item = l1.get(key)
            if item is not None:
                value: bytes = item[1]
                return value, None
        if self.redis is None:
            stored = await self._guard(lambda: self.store.get(key))
            if stored is not None:
                return stored, None
            count = await self._guard(
                lambda: self.store.incr("l:" + key, expires_in=self.settings.lock_ttl)
            )
            return None, ("1" if count == 1 else None)
        found, token = await self._guard(lambda: self.redis.get_or_lock(key))  # type: ignore[union-attr]
        if found is not None and l1 is not None:
            l1.put(key, found)
        return found, token

    async def fill(
        self,
        key: str,
        value: bytes,
        *,
        expires_in: float,
        tags: Iterable[str] = (),
        lock_token: str = "",
        replaces: bool = True,
    ) -> bool:
        """Store a filled entry and release its fill lock ``lock_token``; False if dropped.

        Like :meth:`set`, in one round trip with Redis. ``replaces=False``
        says the lookup that took the lock found no entry, so no other
        instance can hold one in its L1 and no invalidation message is sent.
        """
        self._ensure()
        if self.redis is None:
            stored = await self.set(key, value, expires_in=expires_in, tags=tags)
            if lock_token:
                await self.unlock(key, lock_token)
            return stored
        tag_list = list(dict.fromkeys(tags))
        ttl_ms = max(1, int(expires_in * 1000))
        publish = replaces and self.l1 is not None
        try:
            await self._guard(
                lambda: self.redis.fill(  # type: ignore[union-attr]
                    key, value, ttl_ms, tag_list, lock_token, publish=publish
                )
            )
        except StoreUnavailableError:
            return False
        if self._l1_live() and self.l1 is not None:
            self.l1.put(key, value, expires_in)
        return True

    async def set(
        self, key: str, value: bytes, *, expires_in: float, tags: Iterable[str] = ()
    ) -> bool:
        """Store ``value`` for ``expires_in`` seconds under ``tags``; False if dropped."""
        self._ensure()
        tags = list(dict.fromkeys(tags))
        try:
            await self._guard(lambda: self.store.set(key, value, expires_in=expires_in))
            if tags:
                await self._guard(lambda: self._index(key, tags))
            if self.redis is not None and self.l1 is not None:
                await self._guard(lambda: self.redis.publish([key]))  # type: ignore[union-attr]
        except StoreUnavailableError:
            return False
        if self._l1_live() and self.l1 is not None:
            self.l1.put(key, value, expires_in)
        return True

    async def _index(self, key: str, tags: list[str]) -> None:
        if self.redis is not None:
            await self.redis.add_tags(key, tags)
            return
        for tag in tags:
            keys = self._tags.get(tag)
            if keys is None:
                keys = self._tags[tag] = set()
            if len(keys) >= 10_000:
                # Drop keys whose entries are gone, so a hot tag stays bounded.
                keys.difference_update([k for k in keys if not await self.store.exists(k)])
            keys.add(key)

    async def delete(self, key: str) -> None:
        """Remove one entry everywhere (L2, this L1, other instances' L1)."""
        self._ensure()
        self._evict_local([key])
        await self._guard(lambda: self.store.delete(key))
        if self.redis is not None:
            await self._guard(lambda: self.redis.publish([key]))  # type: ignore[union-attr]

    async def invalidate(self, tags: Iterable[str], *, wait_purge: bool = True) -> int:
        """Remove every entry carrying any of ``tags``, on every instance, and at the CDN.

        The CDN purge hook (if any) is called even when the store fails; its
        own failure is logged and counted, never raised.

        Args:
            tags: the tags to invalidate.
            wait_purge: await the CDN purge (False: run it in the background).

        Returns:
            How many entries were removed.

        Raises:
            StoreUnavailableError: the store is down; nothing was invalidated there.
        """
        tags = list(dict.fromkeys(tags))
        if not tags:
            return 0
        try:
            return await self._invalidate(tags)
        finally:
            if self.cdn is not None:
                if wait_purge:
                    await self.cdn.purge(tags)
                else:
                    self.cdn.schedule(tags)

    async def _invalidate(self, tags: list[str]) -> int:
        self._ensure()
        if self.redis is not None:
            keys = await self._guard(lambda: self.redis.invalidate(tags))  # type: ignore[union-attr]
            self._evict_local(list(keys))
            return len(keys)
        keys = set()
        for tag in tags:
            keys.update(self._tags.pop(tag, ()))
        for key in keys:
            await self._guard(lambda k=key: self.store.delete(k))  # type: ignore[misc]
        return len(keys)

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

    async def aclose(self) -> None:
        """Finish CDN purges, stop the invalidation listener (the store is closed by its owner)."""
        if self.cdn is not None:
            await self.cdn.aclose()
        if self.redis is not None:
            await self.redis.aclose()
