"""Settings of the HTTP response cache and the query-result cache."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from freightscale.settings._base import Section, check_url_scheme

__all__ = ["CacheRule", "CacheSettings", "CdnHeader"]

_PATH = re.compile(r"^/[^\s]*$")

CdnHeader = Literal[
    "surrogate-key", "cache-tag", "surrogate-control", "cdn-cache-control", "s-maxage"
]
"""A header family a CDN rule emits (``s-maxage``: directives added to ``Cache-Control``)."""


class CacheRule(Section):
    """Which responses to cache, for how long and for whom.

    ``path`` is a pattern like Starlette's: ``/shipments/{id}`` matches one
    segment, ``{rest:path}`` any remainder. Parameters may be used in ``tags``
    (``shipment:{id}``), as may ``{tenant}`` and ``{user}``.
    """

    path: str = Field(min_length=1, max_length=512)
    """Path pattern, starting with ``/``."""

    ttl: float | None = Field(default=None, gt=0, le=86_400)
    """Seconds a response stays fresh (None: ``default_ttl``)."""

    scope: Literal["public", "tenant", "role", "user"] = "public"
    """Who shares an entry: everyone (only requests *without* credentials are
    served), everyone of one tenant, everyone of one tenant holding the same
    roles, scopes and permissions (``role``: for routes whose response depends
    only on the tenant and on what the principal may do), or one user (principal)."""

    stale_while_revalidate: float = Field(default=0.0, ge=0, le=86_400)
    """Seconds after expiry during which the stale copy is served while one
    request refreshes it in the background."""

    stale_if_error: float = Field(default=0.0, ge=0, le=86_400)
    """Seconds after expiry during which the stale copy is served if the handler
    fails (raises or answers 5xx)."""

    tags: tuple[str, ...] = Field(default=(), max_length=32)
    """Tags given to every entry of this rule, for :meth:`invalidate`."""

    invalidate_on_write: bool = False
    """After a 2xx POST/PUT/PATCH/DELETE on this path, invalidate the rule's tags."""

    vary: tuple[str, ...] = Field(default=(), max_length=16)
    """Request headers (besides ``Accept-Encoding``) that are part of the key. A
    response whose ``Vary`` names any other header is not stored."""

    cdn: bool = False
    """Emit the headers a CDN keys on (see ``cdn_headers``) on responses this rule
    stores. Refused on ``tenant``/``user`` rules unless ``cdn_scope_keyed``."""

    cdn_headers: tuple[CdnHeader, ...] = Field(
        default=(
            "surrogate-key",
            "cache-tag",
            "surrogate-control",
            "cdn-cache-control",
            "s-maxage",
        ),
        max_length=5,
    )
    """Header families emitted when ``cdn`` is on: ``surrogate-key`` (Fastly,
    space-separated tags), ``cache-tag`` (Cloudflare, Akamai; comma-separated),
    ``surrogate-control`` and ``cdn-cache-control`` (CDN-only freshness), and
    ``s-maxage`` (``s-maxage`` / ``stale-while-revalidate`` / ``stale-if-error``
    added to ``Cache-Control``)."""

    cdn_ttl: float | None = Field(default=None, gt=0, le=31_536_000)
    """Seconds the CDN keeps a response fresh (None: the entry's freshness, from
    ``ttl`` and the response's own ``max-age``). Longer is safe only with a purge hook."""

    cdn_scope_keyed: bool = False
    """Declare that the CDN keys this ``tenant``/``user`` rule's responses on the
    same scope (e.g. one hostname per tenant, or a cache key including the
    tenant header). Without it a scoped rule never emits CDN headers."""

    @model_validator(mode="after")
    def _check_cdn(self) -> CacheRule:
        if self.cdn and self.scope != "public" and not self.cdn_scope_keyed:
            raise ValueError(
                f"rule {self.path!r}: cdn=True on a {self.scope!r}-scoped rule would let a CDN "
                "share one tenant's or user's response with others; set cdn_scope_keyed=True "
                "only if the CDN keys on that scope"
            )
        return self

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not _PATH.match(value):
            raise ValueError(f"path pattern {value!r} must start with '/' and contain no spaces")
        return value

    @field_validator("vary")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.strip().lower() for v in value)


class CacheSettings(Section):
    """The response cache and the query-result cache."""

    enabled: bool = False
    """Install the response-cache middleware in ``build_stack``."""

    rules: tuple[CacheRule, ...] = Field(default=(), max_length=500)
    """Cache rules, first match wins. Paths no rule names are never cached."""

    default_ttl: float = Field(default=30.0, gt=0, le=86_400)
    """Seconds a cached response stays fresh unless its rule says otherwise."""

    max_body_bytes: int = Field(default=1_048_576, ge=1, le=64 * 1_048_576)
    """Responses larger than this are not cached (streamed through unbuffered)."""

    namespace: str = Field(default="cache", min_length=1, max_length=64, pattern=r"^[\w.-]+$")
    """Store namespace of cache entries, tag index and locks."""

    memory_max_bytes: int = Field(default=64 * 1_048_576, ge=1024, le=16 * 1024**3)
    """Bound of the in-process store used when no Redis is configured."""

    l1_enabled: bool = True
    """With Redis: keep hot entries in a small in-process L1 in front of it,
    kept coherent across instances by Redis pub/sub invalidation messages."""

    l1_max_bytes: int = Field(default=16 * 1_048_576, ge=1024, le=4 * 1024**3)
    """Bound of the in-process L1 (bytes of entries)."""

    l1_ttl: float = Field(default=5.0, gt=0, le=3600)
    """Longest time an entry stays in L1; bounds staleness if a pub/sub message is lost."""

    cacheable_statuses: tuple[int, ...] = Field(
        default=(200, 203, 204, 300, 301, 308, 404, 410), min_length=1
    )
    """Statuses that may be stored."""

    honor_request_no_cache: bool = False
    """Let a request's ``Cache-Control: no-cache`` force a refresh and ``no-store``
    bypass the cache. Off by default: any client could otherwise defeat the
    cache (and stampede the origin) at will."""

    credential_cookies: tuple[str, ...] = Field(
        default=("fs_session", "session", "sessionid"), max_length=32
    )
    """Cookie names that make a request credentialed (like ``Authorization``):
    such requests are only served from ``tenant``, ``role`` or ``user`` scoped rules."""

    unkeyed_headers: tuple[str, ...] = Field(
        default=(
            "x-forwarded-host",
            "x-forwarded-server",
            "x-original-url",
            "x-rewrite-url",
            "x-original-host",
            "x-host",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "forwarded",
        ),
        max_length=64,
    )
    """Request headers removed before a cacheable request reaches the app, so
    they can never change a cached body (cache-poisoning defence)."""

    encodings: tuple[Literal["br", "zstd", "gzip"], ...] = ("br", "zstd", "gzip")
    """Codings the compression layer inside the cache offers, in its preference
    order: keep equal to ``compression.encodings``. The key holds the one coding
    a request will get (br / zstd / gzip / identity), so equivalent
    ``Accept-Encoding`` values share one stored variant."""

    tag_header: str = Field(default="cache-tag", min_length=1, max_length=64)
    """Response header a handler may set to tag its response (comma-separated);
    removed before the response is sent."""

    lock_ttl: float = Field(default=5.0, gt=0, le=300)
    """Lifetime of the cross-instance fill lock (``SET NX PX``): longest a
    crashed filler can hold up others."""

    lock_wait: float = Field(default=2.0, ge=0, le=60)
    """How long a request waits for another instance's fill before running the
    handler itself (when there is no stale copy to serve)."""

    store_timeout: float = Field(default=2.0, gt=0, le=30)
    """Seconds one cache store operation may take before the cache is bypassed.
    Measured from the event loop, so it includes time the loop is busy: too
    small a value trips under CPU load (0.5 s did at 200 concurrent requests)."""

    retry_after_failure: float = Field(default=1.0, gt=0, le=300)
    """After a store failure, seconds the cache is bypassed before it is tried again."""

    refresh_timeout: float = Field(default=30.0, gt=0, le=600)
    """Longest a background (stale-while-revalidate) refresh may run."""

    max_refreshes: int = Field(default=64, ge=1, le=10_000)
    """Most background refreshes running at once in one process."""

    tag_index_ttl: float = Field(default=86_400.0, gt=0, le=30 * 86_400)
    """Lifetime of a tag's key list; must exceed every entry's lifetime."""

    max_tags: int = Field(default=32, ge=0, le=256)
    """Most tags one entry keeps (extra tags are dropped and logged)."""

    cdn_purge_url: str = Field(default="", max_length=2048)
    """HTTP(S) endpoint called with the tags on every invalidation (``""``: no
    purge, unless a purge hook is given in code)."""

    cdn_purge_method: Literal["POST", "PUT", "DELETE", "PURGE"] = "POST"
    """HTTP method of the purge request."""

    cdn_purge_token: SecretStr = SecretStr("")
    """Sent as ``Authorization: Bearer <token>`` with each purge request (``""``: none)."""

    cdn_purge_field: str = Field(default="tags", min_length=1, max_length=64)
    """JSON body field holding the tags: ``{"tags": [...]}``."""

    cdn_purge_batch: int = Field(default=30, ge=1, le=1000)
    """Most tags sent in one purge request (CDN APIs cap it; more tags, more requests)."""

    cdn_purge_timeout: float = Field(default=5.0, gt=0, le=60)
    """Seconds one purge request may take (connect, write, read, pool each)."""

    cdn_max_tag_bytes: int = Field(default=8192, ge=64, le=16_384)
    """Longest ``Surrogate-Key`` / ``Cache-Tag`` value emitted; tags past it are left out."""

    @field_validator("cdn_purge_url")
    @classmethod
    def _check_purge_url(cls, value: str) -> str:
        return check_url_scheme(value, ("http", "https"))

    query_default_ttl: float = Field(default=30.0, gt=0, le=86_400)
    """Default TTL of the query-result cache."""

    query_max_rows: int = Field(default=10_000, ge=1, le=1_000_000)
    """Query results with more rows are returned but not cached."""
