"""CDN integration of the response cache: the headers CDNs key on, and purges.

**Headers.** A rule with ``cdn=True`` adds, to every response the cache
*stores* (so never to one it refuses: ``Set-Cookie``, ``private``,
``no-store``, ``no-cache``, a credentialed request on a public rule):

- ``Surrogate-Key`` (space-separated tags, Fastly) and ``Cache-Tag``
  (comma-separated, Cloudflare / Akamai),
- ``Surrogate-Control`` and ``CDN-Cache-Control`` (RFC 9213):
  ``max-age`` from the entry's freshness (or ``cdn_ttl``), plus the rule's
  ``stale-while-revalidate`` / ``stale-if-error``,
- ``s-maxage`` (and the stale directives) in ``Cache-Control``, which
  browsers ignore; a response without ``Cache-Control`` gets ``max-age=0``
  for browsers, so they revalidate (cheaply, by ETag) instead of guessing,
- the rule's ``vary`` headers in ``Vary``, so the CDN keys on what the cache keys on.

Headers the app set itself win. The headers are stored with the entry, so a
hit costs nothing extra. ``tenant``/``user`` rules emit nothing unless the
rule says the CDN keys on the same scope (``cdn_scope_keyed``).

**Purges.** :class:`PurgeDispatcher` wraps a :data:`PurgeHook` (any async
callable taking the tags): :meth:`CacheBackend.invalidate` awaits it, the
invalidate-on-write path runs it in the background. A failing hook never
fails the request: it is logged once per outage and counted.
:class:`HttpPurger` is a generic HTTP purge hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from freightscale.caching.entry import CacheEntry
from freightscale.settings.cache import CacheRule, CacheSettings
from freightscale.telemetry import get_counter

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpPurger", "PurgeDispatcher", "PurgeHook", "apply_cdn_headers", "purge_hook_from"]

logger = logging.getLogger("freightscale.caching.cdn")
_store_errors = get_counter("freightscale.store.errors")  # store, operation
_outages = get_counter("freightscale.backend.outages")  # service, component
_PURGE_ERROR = {"store": "cdn", "operation": "purge"}

PurgeHook: TypeAlias = Callable[[Sequence[str]], Awaitable[None]]
"""An async callable told the tags to purge at the CDN."""

_REFUSE = ("private", "no-store", "no-cache")
_CDN_OWNED = frozenset({b"surrogate-key", b"cache-tag", b"surrogate-control", b"cdn-cache-control"})


def _clean_tags(tags: Iterable[str], limit: int) -> list[str]:
    """Tags a header can carry: printable ASCII, no space or comma, bounded in total."""
    out: list[str] = []
    used = 0
    for tag in dict.fromkeys(tags):
        if not tag or not tag.isascii() or not tag.isprintable() or " " in tag or "," in tag:
            logger.debug("tag %r cannot go in a CDN header; left out", tag)
            continue
        if used + len(tag) + 1 > limit:
            logger.warning("CDN tag headers reached %d bytes; further tags left out", limit)
            break
        used += len(tag) + 1
        out.append(tag)
    return out


def apply_cdn_headers(
    entry: CacheEntry, rule: CacheRule, tags: Sequence[str], settings: CacheSettings
) -> bool:
    """Add the rule's CDN headers to a stored entry (in place).

    Args:
        entry: the response the cache is about to send and store.
        rule: its rule.
        tags: the entry's tags (rule, handler and ``add_cache_tags`` tags).
        settings: for ``cdn_max_tag_bytes``.

    Returns:
        True when headers were added; False when the rule or the response
        forbids it (CDN off, scoped rule not keyed by the CDN, ``private``,
        ``no-store``, ``no-cache`` or ``Set-Cookie``).
    """
    if not rule.cdn or (rule.scope != "public" and not rule.cdn_scope_keyed):
        return False
    control: bytes | None = None
    present: set[bytes] = set()
    for name, value in entry.headers:
        if name == b"set-cookie":
            return False
        if name == b"cache-control":
            control = value
            directives = value.decode("latin-1").lower()
            if any(word in directives for word in _REFUSE):
                return False
        elif name in _CDN_OWNED:
            present.add(name)
    if rule.cdn_ttl is not None:
        ttl = int(rule.cdn_ttl)
    else:
        ttl = max(0, int(entry.fresh_until - entry.stored_at))
    stale = ""
    if rule.stale_while_revalidate:
        stale += f", stale-while-revalidate={int(rule.stale_while_revalidate)}"
    if rule.stale_if_error:
        stale += f", stale-if-error={int(rule.stale_if_error)}"
    cdn_control = f"max-age={ttl}{stale}".encode()
    families = rule.cdn_headers
    added: list[tuple[bytes, bytes]] = []
    if "surrogate-key" in families or "cache-tag" in families:
        clean = _clean_tags(tags, settings.cdn_max_tag_bytes)
        if clean and "surrogate-key" in families and b"surrogate-key" not in present:
            added.append((b"surrogate-key", " ".join(clean).encode()))
        if clean and "cache-tag" in families and b"cache-tag" not in present:
            added.append((b"cache-tag", ",".join(clean).encode()))
    for family in ("surrogate-control", "cdn-cache-control"):
        name = family.encode()
        if family in families and name not in present:
            added.append((name, cdn_control))
    if "s-maxage" in families:
        browser = control.decode("latin-1") if control is not None else "max-age=0"
        lowered = browser.lower()
        if "s-maxage" not in lowered:
            browser += f", s-maxage={ttl}"
            for word, seconds in (
                ("stale-while-revalidate", rule.stale_while_revalidate),
                ("stale-if-error", rule.stale_if_error),
            ):
                if seconds and word not in lowered:
                    browser += f", {word}={int(seconds)}"
            entry.headers = [(n, v) for n, v in entry.headers if n != b"cache-control"]
            added.append((b"cache-control", browser.encode("latin-1")))
    if rule.vary:
        # The cache keys on these request headers; the CDN must too.
        vary = b", ".join(v for n, v in entry.headers if n == b"vary").decode("latin-1")
        listed = {f.strip().lower() for f in vary.split(",") if f.strip()}
        missing = [h for h in rule.vary if h not in listed]
        if missing:
            entry.headers = [(n, v) for n, v in entry.headers if n != b"vary"]
            fields = [f.strip() for f in vary.split(",") if f.strip()] + missing
            added.append((b"vary", ", ".join(fields).encode("latin-1")))
    entry.headers.extend(added)
    return True


class HttpPurger:
    """A generic HTTP purge hook: one request per batch of tags.

    The default body is JSON ``{"tags": [...]}`` (``field`` renames the key);
    ``body`` replaces it with any encoding (it returns the request body bytes).
    A non-2xx answer raises :class:`httpx.HTTPStatusError` (the dispatcher
    logs and counts it).

    Args:
        url: the purge endpoint (``http`` or ``https``).
        method: HTTP method (``POST``, ``PURGE``, ...).
        headers: extra request headers (e.g. an API token).
        timeout: seconds for each of connect / write / read / pool.
        batch_size: most tags per request.
        field: JSON key of the tag list.
        body: builds the body from one batch (default: JSON with ``field``).
        client: an ``httpx.AsyncClient`` to use (default: one owned and closed here).
    """

    def __init__(
        self,
        url: str,
        method: str = "POST",
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
        batch_size: int = 30,
        field: str = "tags",
        body: Callable[[list[str]], bytes] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"purge url {url[:40]!r} must start with http:// or https://")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.url = url
        self.method = method.upper()
        self.headers = {"content-type": "application/json", **(headers or {})}
        self.timeout = timeout
        self.batch_size = batch_size
        self.field = field
        self.body = body
        self._client = client
        self._owned = client is None

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> HttpPurger:
        """Build from ``cdn_purge_*`` (``cdn_purge_url`` must be set)."""
        headers = {}
        token = settings.cdn_purge_token.get_secret_value()
        if token:
            headers["authorization"] = f"Bearer {token}"
        return cls(
            settings.cdn_purge_url,
            settings.cdn_purge_method,
            headers=headers,
            timeout=settings.cdn_purge_timeout,
            batch_size=settings.cdn_purge_batch,
            field=settings.cdn_purge_field,
        )

    def __repr__(self) -> str:
        # Never the headers: they may hold a token.
        return f"HttpPurger({self.method} {self.url.split('?')[0]}, batch={self.batch_size})"

    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout))
        return self._client

    async def __call__(self, tags: Sequence[str]) -> None:
        """Purge ``tags``, ``batch_size`` at a time."""
        client = self._get_client()
        tags = list(tags)
        for start in range(0, len(tags), self.batch_size):
            batch = tags[start : start + self.batch_size]
            content = self.body(batch) if self.body is not None else json.dumps({self.field: batch})
            response = await client.request(
                self.method, self.url, content=content, headers=self.headers
            )
            response.raise_for_status()

    async def aclose(self) -> None:
        """Close the HTTP client if this purger created it."""
        if self._client is not None and self._owned:
            await self._client.aclose()
            self._client = None


def purge_hook_from(settings: CacheSettings, hook: PurgeHook | None) -> PurgeHook | None:
    """The hook given in code, else an :class:`HttpPurger` if ``cdn_purge_url`` is set."""
    if hook is not None:
        return hook
    if settings.cdn_purge_url:
        return HttpPurger.from_settings(settings)
    return None


class PurgeDispatcher:
    """Runs a purge hook so that it can never fail or hang a request.

    Args:
        hook: the purge hook.
        timeout: longest one call of the hook may take.
        max_pending: most background purges at once; more are dropped (logged).
    """

    def __init__(self, hook: PurgeHook, *, timeout: float = 30.0, max_pending: int = 256) -> None:
        self.hook = hook
        self.timeout = timeout
        self.max_pending = max_pending
        self.failing = False
        self._tasks: set[asyncio.Task[bool]] = set()

    def __repr__(self) -> str:
        return f"PurgeDispatcher({self.hook!r}, pending={len(self._tasks)})"

    async def purge(self, tags: Sequence[str]) -> bool:
        """Call the hook; True on success. Errors are logged once per outage and counted."""
        tags = list(dict.fromkeys(tags))
        if not tags:
            return True
        try:
            async with asyncio.timeout(self.timeout):
                await self.hook(tags)
        except Exception as exc:  # a purge failure must never fail the request
            _store_errors.add(1, _PURGE_ERROR)
            if not self.failing:
                self.failing = True
                _outages.add(1, {"service": "cdn", "component": "cache"})
                logger.warning(
                    "CDN purge of %d tag(s) failed (%r); the CDN may serve stale copies "
                    "until their TTL; further failures are not logged until a purge succeeds",
                    len(tags),
                    exc,
                )
            return False
        if self.failing:
            self.failing = False
            logger.warning("CDN purge works again")
        return True

    def schedule(self, tags: Sequence[str]) -> None:
        """Purge in the background (the invalidate-on-write path)."""
        tags = list(tags)
        if not tags:
            return
        if len(self._tasks) >= self.max_pending:
            _store_errors.add(1, _PURGE_ERROR)
            logger.warning("%d CDN purges pending; dropping a purge of %s", len(self._tasks), tags)
            return
        task = asyncio.get_running_loop().create_task(self.purge(tags))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout`` seconds) for background purges to finish."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Let pending purges finish (bounded), cancel the rest, close the hook."""
        await self.drain(timeout)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        close: Any = getattr(self.hook, "aclose", None)
        if callable(close):
            with contextlib.suppress(Exception):
                await close()
