"""One cacheable GET/HEAD request: key, lookup, single flight, fill, refresh.

See :mod:`freightscale.caching.middleware` for the behaviour; this module is
its per-request half (STYLE: per-request state lives in a small object).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import TYPE_CHECKING

from freightscale.caching.capture import (
    ResponseCapture,
    discard,
    has_cookie,
    labelled,
    no_body,
    send_entry,
)
from freightscale.caching.cdn import apply_cdn_headers
from freightscale.caching.entry import CacheEntry, CorruptEntry, decode_entry, encode_entry
from freightscale.caching.rules import (
    CompiledRule,
    cache_key,
    format_tags,
    normalize_accept_encoding,
    role_scope_id,
)
from freightscale.caching.singleflight import SingleFlight
from freightscale.context import Principal, get_principal, scope_state
from freightscale.exceptions import StoreError
from freightscale.telemetry import get_counter
from freightscale.types import Receive, Scope, Send

if TYPE_CHECKING:
    from freightscale.caching.middleware import ResponseCacheMiddleware

__all__ = ["CACHE_FILL_KEY", "CacheRequest"]

logger = logging.getLogger("freightscale.caching")
_requests = get_counter("freightscale.cache.lookups")  # result: hit, miss, stale, bypass
_fallbacks = get_counter("freightscale.backend.fallbacks")  # component, policy
_FALLBACK = {"component": "cache", "policy": "bypass"}

CACHE_FILL_KEY = "cache_fill"
"""``scope["freightscale"]`` flag telling the compression layer this response will be stored."""
_BYPASS = b"BYPASS"
_HITS = _requests.series({"result": "hit"})
_STALE = _requests.series({"result": "stale"})
_MISSES = _requests.series({"result": "miss"})
_BYPASSES = _requests.series({"result": "bypass"})


class CacheRequest:
    """Per-request state of one cacheable GET/HEAD."""

    def __init__(
        self,
        mw: ResponseCacheMiddleware,
        compiled: CompiledRule,
        params: dict[str, str],
        scope: Scope,
    ) -> None:
        self.mw = mw
        self.compiled = compiled
        self.rule = compiled.rule
        self.params = params
        state = scope_state(scope)  # created before the copy below, so it is shared
        state["response_cache"] = mw.cache
        self.state = state
        self.head = scope["method"] == "HEAD"
        self.principal: Principal | None = get_principal(scope)
        self.if_none_match: bytes | None = None
        self.bypass = False
        self.refresh_only = False
        self._lock_token = ""  # the fill lock this request holds, until its store releases it
        self._replaces = True  # the stored entry may replace one other instances' L1 hold
        accept: str | None = None
        host = ""
        credentialed = self.principal is not None
        vary: dict[bytes, str] = {}
        headers = []
        for name, value in scope["headers"]:
            if name in mw._unkeyed:
                continue
            if name == b"accept-encoding":
                accept = value.decode("latin-1")
                continue
            headers.append((name, value))
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"authorization":
                credentialed = True
            elif name == b"cookie":
                credentialed = credentialed or has_cookie(value, mw._cookies)
            elif name == b"if-none-match":
                self.if_none_match = value
            elif name == b"cache-control" and mw.config.honor_request_no_cache:
                directives = value.lower()
                self.bypass = self.bypass or b"no-store" in directives
                self.refresh_only = b"no-cache" in directives
            if name in compiled.vary:
                vary[name] = " ".join(value.decode("latin-1").split())
        scope_kind, scope_id = self.rule.scope, ""
        if scope_kind == "public":
            self.bypass = self.bypass or credentialed
        elif self.principal is None or (
            scope_kind in ("tenant", "role") and self.principal.tenant_id is None
        ):
            self.bypass = True  # nothing to key a tenant/role/user entry on
        elif scope_kind == "tenant":
            scope_id = f"t:{self.principal.tenant_id}"
        elif scope_kind == "role":
            scope_id = role_scope_id(self.principal)
        else:
            scope_id = f"u:{self.principal.tenant_id}\x00{self.principal.user_id}"
        ae = normalize_accept_encoding(accept, mw.encodings)
        headers.append((b"accept-encoding", ae.encode("latin-1")))
        self._outer = scope
        self._headers = headers
        self.key = cache_key(
            scope_kind=scope_kind,
            scope_id=scope_id,
            host=host,
            root_path=scope.get("root_path", ""),
            path=scope["path"],
            query_string=scope.get("query_string", b""),
            vary_values=[vary.get(h, "") for h in compiled.vary],
            accept_encoding=ae,
        )

    @functools.cached_property
    def scope(self) -> Scope:
        """The scope the app sees: unkeyed headers removed, Accept-Encoding normalized.

        Built only when the app runs (an L1 hit never needs it).
        """
        scope = dict(self._outer)
        scope["headers"] = self._headers
        return scope

    async def run(self, receive: Receive, send: Send) -> None:
        mw = self.mw
        if self.bypass:
            await self._bypass(receive, send)
            return
        if self.head:
            await self._head(receive, send)
            return
        hot = mw.cache.peek(self.key)
        if hot is not None:
            # L1 hit with the decoded entry at hand: no I/O, no decoding.
            now = mw.clock()
            if now < hot.fresh_until:
                _HITS.value += 1
                await send_entry(
                    send, hot, b"HIT", now, head=False, if_none_match=self.if_none_match
                )
                return
        # Concurrent requests for one key share one lookup and at most one fill.
        future, leader = mw.flight.join(self.key)
        if not leader:
            shared = await SingleFlight.wait(future)
            if shared is not None:
                await self._send_shared(send, shared)
            else:
                await mw.app(self.scope, receive, labelled(send, b"MISS", mw._tag_header))
            return
        result: CacheEntry | None = None
        try:
            entry: CacheEntry | None = None
            token: str | None = None
            if not self.refresh_only:
                try:
                    entry, token = await self._lookup_or_lock()
                except StoreError:
                    _fallbacks.add(1, _FALLBACK)
                    await self._bypass(receive, send)
                    return
            now = mw.clock()
            if entry is not None and now < entry.swr_until:
                result = entry
                mw.flight.finish(self.key, entry)
                if now < entry.fresh_until:
                    _HITS.value += 1
                    label = b"HIT"
                else:
                    _STALE.value += 1
                    label = b"STALE"
                    mw._refresh_later(self)
                await send_entry(
                    send, entry, label, now, head=False, if_none_match=self.if_none_match
                )
                return
            fallback = entry if entry is not None and now < entry.sie_until else None
            _MISSES.value += 1
            result = await self._fill(receive, send, fallback, token)
        finally:
            mw.flight.finish(self.key, result)

    async def _bypass(self, receive: Receive, send: Send) -> None:
        _BYPASSES.value += 1
        await self.mw.app(self.scope, receive, labelled(send, _BYPASS, self.mw._tag_header))

    async def _head(self, receive: Receive, send: Send) -> None:
        """HEAD is answered from the GET entry; a miss runs the app (nothing to store)."""
        try:
            entry = await self._lookup()
        except StoreError:
            await self._bypass(receive, send)
            return
        now = self.mw.clock()
        if entry is not None and now < entry.swr_until:
            label = b"HIT" if now < entry.fresh_until else b"STALE"
            await send_entry(send, entry, label, now, head=True, if_none_match=self.if_none_match)
            return
        await self.mw.app(self.scope, receive, labelled(send, b"MISS", self.mw._tag_header))

    async def _lookup(self) -> CacheEntry | None:
        raw = await self.mw.cache.get(self.key)
        if raw is None:
            return None
        try:
            entry = decode_entry(raw)
        except CorruptEntry:
            logger.warning("dropping a corrupt response cache entry %s", self.key)
            with contextlib.suppress(StoreError):
                await self.mw.cache.delete(self.key)
            return None
        self.mw.cache.remember(self.key, entry)
        return entry

    async def _lookup_or_lock(self) -> tuple[CacheEntry | None, str | None]:
        """The stored entry, or None and the fill lock's token if the lookup took it."""
        raw, token = await self.mw.cache.get_or_lock(self.key)
        if raw is None:
            return None, token
        try:
            entry = decode_entry(raw)
        except CorruptEntry:
            logger.warning("dropping a corrupt response cache entry %s", self.key)
            with contextlib.suppress(StoreError):
                await self.mw.cache.delete(self.key)
            return None, None
        self.mw.cache.remember(self.key, entry)
        return entry, None

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

    async def _send_shared(self, send: Send, entry: CacheEntry) -> None:
        now = self.mw.clock()
        label = b"HIT" if now < entry.fresh_until else b"STALE"
        await send_entry(send, entry, label, now, head=self.head, if_none_match=self.if_none_match)

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
