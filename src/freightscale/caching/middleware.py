"""``ResponseCacheMiddleware``: a shared HTTP cache that never leaks across tenants.

Per request (GET/HEAD on a path some rule names):

1. **Scope.** A request with credentials (``Authorization``, a session
   cookie, or a bound principal) is only served by ``tenant``/``user`` rules;
   a ``public`` rule bypasses it. The key holds the tenant or principal id.
2. **Key.** Built from the request (see :mod:`freightscale.caching.rules`);
   unkeyed headers are removed before the app sees the request, and
   ``Accept-Encoding`` is replaced by its canonical form, so the compression
   layer *inside* the cache produces exactly the variant the key names and a
   hit costs no compression work.
3. **Hit** (fresh): stored bytes are sent (``X-Cache: HIT``, ``Age``), or a
   304 for a matching ``If-None-Match``. **Stale** within
   ``stale_while_revalidate``: sent (``STALE``) and refreshed in the background.
4. **Miss**: one request per key runs the handler (asyncio single flight in
   the process, ``SET NX PX`` lock across instances; the others wait for the
   fill or get the stale copy). A 5xx or an exception within
   ``stale_if_error`` serves the stale copy instead.

A failing store makes the cache step aside (``X-Cache: BYPASS``) until it is
back (see :class:`~freightscale.caching.backend.CacheBackend`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import metrics

from freightscale.caching.backend import CacheBackend
from freightscale.caching.capture import ResponseCapture, send_entry
from freightscale.caching.entry import CacheEntry, CorruptEntry, decode_entry, encode_entry
from freightscale.caching.rules import (
    CompiledRule,
    cache_key,
    compile_rules,
    format_tags,
    match_rule,
    normalize_accept_encoding,
)
from freightscale.caching.singleflight import SingleFlight
from freightscale.context import Principal, get_principal, scope_state
from freightscale.exceptions import StoreError
from freightscale.settings.cache import CacheSettings
from freightscale.stores.base import Store
from freightscale.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CACHE_FILL_KEY", "ResponseCacheMiddleware", "add_cache_tags", "get_response_cache"]

logger = logging.getLogger("freightscale.caching")
_requests = metrics.get_meter("freightscale").create_counter(
    "freightscale.cache.requests", description="Response cache lookups by result"
)

CACHE_FILL_KEY = "cache_fill"
"""``scope["freightscale"]`` flag telling the compression layer this response will be stored."""
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_BYPASS = b"BYPASS"
_HIT = {"result": "hit"}


def add_cache_tags(scope: Scope, *tags: str) -> None:
    """Tag the response being built (call from a handler with ``request.scope``)."""
    scope_state(scope).setdefault("cache_tags", []).extend(tags)


def get_response_cache(scope: Scope) -> CacheBackend | None:
    """The cache serving this request (for ``await cache.invalidate(tags=…)``)."""
    backend = scope_state(scope).get("response_cache")
    return backend if isinstance(backend, CacheBackend) else None


class ResponseCacheMiddleware:
    """Cache GET/HEAD responses for the paths the rules name.

    Args:
        app: the ASGI app (with the compression middleware inside, if any).
        config: the cache settings section with its ``rules``.
        store: where entries live; a ``RedisStore`` enables cross-instance
            locks, tags and the two-tier L1 (ignored when ``backend`` is given).
            May be a zero-argument callable, resolved on the first request
            (e.g. ``lambda: stack.store("http")``, whose client opens at startup).
        backend: a shared :class:`CacheBackend` (e.g. also used by a ``QueryCache``).
        clock: wall clock for freshness and ``Age`` (tests inject one).
    """

    def __init__(
        self,
        app: ASGIApp,
        config: CacheSettings | None = None,
        *,
        store: Store | Callable[[], Store] | None = None,
        backend: CacheBackend | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.config = config = config or CacheSettings()
        self.cache = backend or CacheBackend(store, config)
        self.rules = compile_rules(config)
        self.write_rules = [r for r in self.rules if r.rule.invalidate_on_write and r.rule.tags]
        self.clock = clock
        self.flight: SingleFlight[CacheEntry] = SingleFlight()
        self._unkeyed = frozenset(h.lower().encode() for h in config.unkeyed_headers)
        self._cookies = frozenset(c.encode() for c in config.credential_cookies)
        self._statuses = frozenset(config.cacheable_statuses)
        self._tag_header = config.tag_header.lower().encode()
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        zstd = importlib.util.find_spec("zstandard") is not None
        self.encodings = tuple(e for e in config.encodings if e != "zstd" or zstd)

    def __repr__(self) -> str:
        return f"ResponseCacheMiddleware(rules={len(self.rules)}, cache={self.cache!r})"

    async def aclose(self) -> None:
        """Cancel background refreshes and stop the L1 invalidation listener."""
        for task in list(self._refreshing.values()):
            task.cancel()
        for task in list(self._refreshing.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.cache.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            if method in _UNSAFE and self.write_rules:
                await self._write(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        found = match_rule(self.rules, scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        await _Request(self, found[0], found[1], scope).run(receive, send)

    async def _write(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = match_rule(self.write_rules, scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        compiled, params = found

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                # Before the client hears "done", so its next read is fresh.
                principal = get_principal(scope)
                tags = format_tags(
                    compiled.rule.tags,
                    params,
                    principal.tenant_id if principal else None,
                    principal.user_id if principal else None,
                )
                try:
                    await self.cache.invalidate(tags)
                except StoreError as exc:
                    logger.warning(
                        "could not invalidate %s after %s: %r", tags, scope["method"], exc
                    )
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _refresh_later(self, request: _Request) -> None:
        key = request.key
        if key in self._refreshing or len(self._refreshing) >= self.config.max_refreshes:
            return
        task = asyncio.get_running_loop().create_task(request.refresh())
        self._refreshing[key] = task
        task.add_done_callback(lambda _t: self._refreshing.pop(key, None))


class _Request:
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
                credentialed = credentialed or _has_cookie(value, mw._cookies)
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
            scope_kind == "tenant" and self.principal.tenant_id is None
        ):
            self.bypass = True  # nothing to key a tenant/user entry on
        elif scope_kind == "tenant":
            scope_id = f"t:{self.principal.tenant_id}"
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
                _requests.add(1, _HIT)
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
                await mw.app(self.scope, receive, _labelled(send, b"MISS", mw._tag_header))
            return
        result: CacheEntry | None = None
        try:
            entry: CacheEntry | None = None
            if not self.refresh_only:
                try:
                    entry = await self._lookup()
                except StoreError:
                    await self._bypass(receive, send)
                    return
            now = mw.clock()
            if entry is not None and now < entry.swr_until:
                result = entry
                mw.flight.finish(self.key, entry)
                if now < entry.fresh_until:
                    _requests.add(1, _HIT)
                    label = b"HIT"
                else:
                    _requests.add(1, {"result": "stale"})
                    label = b"STALE"
                    mw._refresh_later(self)
                await send_entry(
                    send, entry, label, now, head=False, if_none_match=self.if_none_match
                )
                return
            fallback = entry if entry is not None and now < entry.sie_until else None
            _requests.add(1, {"result": "miss"})
            result = await self._fill(receive, send, fallback)
        finally:
            mw.flight.finish(self.key, result)

    async def _bypass(self, receive: Receive, send: Send) -> None:
        _requests.add(1, {"result": "bypass"})
        await self.mw.app(self.scope, receive, _labelled(send, _BYPASS, self.mw._tag_header))

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
        await self.mw.app(self.scope, receive, _labelled(send, b"MISS", self.mw._tag_header))

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

    async def _fill(
        self, receive: Receive, send: Send, fallback: CacheEntry | None
    ) -> CacheEntry | None:
        """Leader of this process: take the cross-instance lock, or wait for its holder."""
        mw = self.mw
        token = await mw.cache.lock(self.key)
        if token is None:
            # Another instance is filling this key.
            shared = fallback or await self._wait_for_fill()
            if shared is not None:
                mw.flight.finish(self.key, shared)
                await self._send_shared(send, shared)
                return shared
            token = ""  # waited long enough: run the handler ourselves
        try:
            if token and not self.refresh_only:
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
            await mw.cache.unlock(self.key, token)

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
        mw.flight.finish(self.key, entry)
        await send_entry(
            send, entry, b"MISS", entry.stored_at, head=False, if_none_match=self.if_none_match
        )
        await self._store(entry, capture)
        return entry

    def _entry(self, capture: ResponseCapture) -> CacheEntry | None:
        rule = self.rule
        return capture.entry(
            self.mw.clock(), self.compiled.ttl, rule.stale_while_revalidate, rule.stale_if_error
        )

    async def _store(self, entry: CacheEntry, capture: ResponseCapture) -> None:
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
        lifetime = max(entry.swr_until, entry.sie_until) - entry.stored_at
        await self.mw.cache.set(self.key, encode_entry(entry), expires_in=lifetime, tags=tags)

    async def refresh(self) -> None:
        """Background refresh for stale-while-revalidate (holds the fill lock)."""
        mw = self.mw
        token = await mw.cache.lock(self.key)
        if token is None:
            return
        try:
            scope = dict(self.scope)
            self.state = scope["freightscale"] = dict(self.state)
            self.state[CACHE_FILL_KEY] = True
            self.state["cache_tags"] = []
            capture = self._capture(_discard, swallow_errors=True)
            async with asyncio.timeout(mw.config.refresh_timeout):
                await mw.app(scope, _no_body(), capture.send)
            entry = self._entry(capture)
            if entry is not None:
                await self._store(entry, capture)
        except Exception:
            logger.warning("background refresh of %s failed", self.scope["path"], exc_info=True)
        finally:
            await mw.cache.unlock(self.key, token)


def _has_cookie(header: bytes, names: frozenset[bytes]) -> bool:
    for pair in header.split(b";"):
        name = pair.partition(b"=")[0].strip()
        if name in names:
            return True
    return False


def _labelled(send: Send, label: bytes, tag_header: bytes) -> Send:
    async def wrapper(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(n, v) for n, v in message.get("headers", []) if n != tag_header]
            headers.append((b"x-cache", label))
            message["headers"] = headers
        await send(message)

    return wrapper


async def _discard(message: Message) -> None:
    return None


def _no_body() -> Receive:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # never disconnects; the timeout bounds it
        return {"type": "http.disconnect"}

    return receive
