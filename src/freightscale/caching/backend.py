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

The entry and tag operations are here; the store binding, the outage policy,
the L1 and the fill locks they build on are in
:mod:`freightscale.caching._backend_core`.
"""

from __future__ import annotations

from collections.abc import Iterable

from freightscale.caching._backend_core import _BackendCore
from freightscale.exceptions import StoreUnavailableError

__all__ = ["CacheBackend"]


class CacheBackend(_BackendCore):
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

    # -- entries -----------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """Return the bytes under ``key`` (L1 first), or None.

        Raises:
            StoreUnavailableError: the store is down (callers bypass the cache).
        """
        l1, value = self._from_l1(key)
        if value is not None:
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
        l1, value = self._from_l1(key)
        if value is not None:
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

    async def aclose(self) -> None:
        """Finish CDN purges, stop the invalidation listener (the store is closed by its owner)."""
        if self.cdn is not None:
            await self.cdn.aclose()
        if self.redis is not None:
            await self.redis.aclose()
