"""Filling a cache entry: the cross-instance lock, the handler run, capture and store.

The second layer of :class:`~freightscale.caching.request.CacheRequest`
(the leader's path on a miss, and the stale-while-revalidate refresh).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from freightscale.caching._lookup import _Lookup
from freightscale.caching.capture import ResponseCapture, discard, no_body, send_entry
from freightscale.caching.cdn import apply_cdn_headers
from freightscale.caching.entry import CacheEntry, encode_entry
from freightscale.caching.rules import format_tags
from freightscale.exceptions import StoreError
from freightscale.types import Receive, Send

logger = logging.getLogger("freightscale.caching")

CACHE_FILL_KEY = "cache_fill"
"""``scope["freightscale"]`` flag telling the compression layer this response will be stored."""


class _Fill(_Lookup):
    """The fill and refresh layer of one cacheable GET/HEAD."""

    async def _fill(
        self,
        receive: Receive,
        send: Send,
        fallback: CacheEntry | None,
        token: str | None = None,
    ) -> CacheEntry | None:
        """Leader of this process: hold the cross-instance lock, or wait for its holder.

        ``token``: the lock, already taken by the lookup that found no entry
        (nothing to double-check, and no other instance's L1 holds the key).
        """
        mw = self.mw
        locked_by_lookup = token is not None
        if token is None:
            token = await mw.cache.lock(self.key)
        if token is None:
            # Another instance is filling this key.
            shared = fallback or await self._wait_for_fill()
            if shared is not None:
                mw.flight.finish(self.key, shared)
                await self._send_shared(send, shared)
                return shared
            token = ""  # waited long enough: run the handler ourselves
        self._lock_token = token
        self._replaces = not locked_by_lookup
        try:
            if token and not locked_by_lookup and not self.refresh_only:
                # Double-check: another instance may have filled the key and
                # released its lock between our lookup and our lock.
                with contextlib.suppress(StoreError):
                    filled = await self._lookup()
                    if filled is not None and mw.clock() < filled.fresh_until:
                        mw.flight.finish(self.key, filled)
                        await self._send_shared(send, filled)
                        return filled
            return await self._run(receive, send, fallback)
        finally:
            if self._lock_token:  # not released by the store
                await mw.cache.unlock(self.key, self._lock_token)

    async def _wait_for_fill(self) -> CacheEntry | None:
        deadline = time.monotonic() + self.mw.config.lock_wait
        delay = 0.01
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.1)
            try:
                entry = await self._lookup()
            except StoreError:
                return None
            if entry is not None and self.mw.clock() < entry.fresh_until:
                return entry
        return None

    def _capture(self, send: Send, swallow_errors: bool) -> ResponseCapture:
        mw = self.mw
        vary_ok = frozenset({b"accept-encoding", *self.compiled.vary})
        return ResponseCapture(
            send,
            statuses=mw._statuses,
            allow_private=self.rule.scope == "user",
            vary_ok=vary_ok,
            max_body=mw.config.max_body_bytes,
            tag_header=mw._tag_header,
            swallow_errors=swallow_errors,
        )

    async def _run(
        self, receive: Receive, send: Send, fallback: CacheEntry | None
    ) -> CacheEntry | None:
        """Run the handler, capture, send and store. Returns the shareable entry."""
        mw = self.mw
        self.state[CACHE_FILL_KEY] = True
        capture = self._capture(send, swallow_errors=fallback is not None)
        try:
            await mw.app(self.scope, receive, capture.send)
        except Exception:
            if fallback is None or capture.started:
                raise
            logger.warning(
                "handler failed for %s; serving the stale copy", self.scope["path"], exc_info=True
            )
            capture.failed = True
        if capture.failed and fallback is not None:
            await self._send_shared(send, fallback)
            return fallback
        entry = self._entry(capture)
        if entry is None:
            return None
        tags = self._tags(capture)
        apply_cdn_headers(entry, self.rule, tags, mw.config)
        mw.flight.finish(self.key, entry)
        await send_entry(
            send, entry, b"MISS", entry.stored_at, head=False, if_none_match=self.if_none_match
        )
        await self._store(entry, tags)
        return entry

    def _entry(self, capture: ResponseCapture) -> CacheEntry | None:
        rule = self.rule
        return capture.entry(
            self.mw.clock(), self.compiled.ttl, rule.stale_while_revalidate, rule.stale_if_error
        )

    def _tags(self, capture: ResponseCapture) -> list[str]:
        """The entry's tags: the rule's, the tag header's and ``add_cache_tags``'."""
        principal = self.principal
        tags = format_tags(
            self.rule.tags,
            self.params,
            principal.tenant_id if principal else None,
            principal.user_id if principal else None,
        )
        tags += capture.tags + list(self.state.get("cache_tags", ()))
        limit = self.mw.config.max_tags
        if len(tags) > limit:
            logger.warning(
                "response for %s has %d tags; keeping %d", self.scope["path"], len(tags), limit
            )
            tags = tags[:limit]
        return tags

    async def _store(self, entry: CacheEntry, tags: list[str]) -> None:
        """Store the entry and release the fill lock in the same step."""
        lifetime = max(entry.swr_until, entry.sie_until) - entry.stored_at
        token, self._lock_token = self._lock_token, ""
        await self.mw.cache.fill(
            self.key,
            encode_entry(entry),
            expires_in=lifetime,
            tags=tags,
            lock_token=token,
            replaces=self._replaces,
        )

    async def refresh(self) -> None:
        """Background refresh for stale-while-revalidate (holds the fill lock)."""
        mw = self.mw
        token = await mw.cache.lock(self.key)
        if token is None:
            return
        self._lock_token, self._replaces = token, True
        try:
            scope = dict(self.scope)
            self.state = scope["freightscale"] = dict(self.state)
            self.state[CACHE_FILL_KEY] = True
            self.state["cache_tags"] = []
            capture = self._capture(discard, swallow_errors=True)
            async with asyncio.timeout(mw.config.refresh_timeout):
                await mw.app(scope, no_body(), capture.send)
            entry = self._entry(capture)
            if entry is not None:
                tags = self._tags(capture)
                apply_cdn_headers(entry, self.rule, tags, mw.config)
                await self._store(entry, tags)
        except Exception:
            logger.warning("background refresh of %s failed", self.scope["path"], exc_info=True)
        finally:
            if self._lock_token:  # not released by the store
                await mw.cache.unlock(self.key, self._lock_token)
