"""A cacheable request's key, the scope its app sees, and lookups of its entry.

The first layer of :class:`~freightscale.caching.request.CacheRequest`:
everything known before a handler runs (the entry lookups also serve the fill).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import TYPE_CHECKING

from freightscale.caching.capture import has_cookie, send_entry
from freightscale.caching.entry import CacheEntry, CorruptEntry, decode_entry
from freightscale.caching.rules import (
    CompiledRule,
    cache_key,
    normalize_accept_encoding,
    role_scope_id,
)
from freightscale.context import Principal, get_principal, scope_state
from freightscale.exceptions import StoreError
from freightscale.types import Scope, Send

if TYPE_CHECKING:
    from freightscale.caching.middleware import ResponseCacheMiddleware

logger = logging.getLogger("freightscale.caching")


class _Lookup:
    """Key, app scope and stored-entry lookups of one cacheable GET/HEAD."""

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

    async def _lookup(self) -> CacheEntry | None:
        raw = await self.mw.cache.get(self.key)
        if raw is None:
            return None
        return await self._decoded(raw)

    async def _decoded(self, raw: bytes) -> CacheEntry | None:
        """The entry stored as ``raw`` (kept in L1), or None after dropping a corrupt one."""
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
        return await self._decoded(raw), None

    async def _send_shared(self, send: Send, entry: CacheEntry) -> None:
        now = self.mw.clock()
        label = b"HIT" if now < entry.fresh_until else b"STALE"
        await send_entry(send, entry, label, now, head=self.head, if_none_match=self.if_none_match)
