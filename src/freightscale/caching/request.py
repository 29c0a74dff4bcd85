"""One cacheable GET/HEAD request: key, lookup, single flight, fill, refresh.

See :mod:`freightscale.caching.middleware` for the behaviour; this module is
its per-request half (STYLE: per-request state lives in a small object).

:class:`CacheRequest` is built in layers, one module each: the key, the
scope the app sees and the entry lookups (:mod:`~freightscale.caching._lookup`),
the fill and the background refresh (:mod:`~freightscale.caching._fill`), and
here the per-request decision: hit, stale, miss or bypass.
"""

from __future__ import annotations

from freightscale.caching._fill import CACHE_FILL_KEY, _Fill
from freightscale.caching.capture import labelled, send_entry
from freightscale.caching.entry import CacheEntry
from freightscale.caching.singleflight import SingleFlight
from freightscale.exceptions import StoreError
from freightscale.telemetry import get_counter
from freightscale.types import Receive, Send

__all__ = ["CACHE_FILL_KEY", "CacheRequest"]

_requests = get_counter("freightscale.cache.lookups")  # result: hit, miss, stale, bypass
_fallbacks = get_counter("freightscale.backend.fallbacks")  # component, policy
_FALLBACK = {"component": "cache", "policy": "bypass"}

_BYPASS = b"BYPASS"
_HITS = _requests.series({"result": "hit"})
_STALE = _requests.series({"result": "stale"})
_MISSES = _requests.series({"result": "miss"})
_BYPASSES = _requests.series({"result": "bypass"})


class CacheRequest(_Fill):
    """Per-request state of one cacheable GET/HEAD."""

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
