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
import importlib.util
import logging
import time
from collections.abc import Callable

from freightscale.caching.backend import CacheBackend
from freightscale.caching.cdn import PurgeHook
from freightscale.caching.entry import CacheEntry
from freightscale.caching.request import CACHE_FILL_KEY, CacheRequest
from freightscale.caching.rules import compile_rules, format_tags, match_rule
from freightscale.caching.singleflight import SingleFlight
from freightscale.context import get_principal, scope_state
from freightscale.exceptions import StoreError
from freightscale.settings.cache import CacheSettings
from freightscale.stores.base import Store
from freightscale.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CACHE_FILL_KEY", "ResponseCacheMiddleware", "add_cache_tags", "get_response_cache"]

logger = logging.getLogger("freightscale.caching")
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


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
        purge: CDN purge hook for invalidations (overrides ``cdn_purge_url``;
            also set on a given ``backend``).
    """

    def __init__(
        self,
        app: ASGIApp,
        config: CacheSettings | None = None,
        *,
        store: Store | Callable[[], Store] | None = None,
        backend: CacheBackend | None = None,
        clock: Callable[[], float] = time.time,
        purge: PurgeHook | None = None,
    ) -> None:
        self.app = app
        self.config = config = config or CacheSettings()
        self.cache = backend or CacheBackend(store, config, purge=purge)
        if backend is not None and purge is not None:
            backend.set_purge_hook(purge)
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
        await CacheRequest(self, found[0], found[1], scope).run(receive, send)

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
                    # The CDN purge runs in the background: a slow CDN API never delays writes.
                    await self.cache.invalidate(tags, wait_purge=False)
                except StoreError as exc:
                    logger.warning(
                        "could not invalidate %s after %s: %r", tags, scope["method"], exc
                    )
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _refresh_later(self, request: CacheRequest) -> None:
        key = request.key
        if key in self._refreshing or len(self._refreshing) >= self.config.max_refreshes:
            return
        task = asyncio.get_running_loop().create_task(request.refresh())
        self._refreshing[key] = task
        task.add_done_callback(lambda _t: self._refreshing.pop(key, None))
