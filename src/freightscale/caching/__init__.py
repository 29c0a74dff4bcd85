"""HTTP response cache and query-result cache.

::

    from freightscale.caching import ResponseCacheMiddleware
    from freightscale.settings.cache import CacheRule, CacheSettings

    settings = CacheSettings(rules=[CacheRule(path="/shipments/{id}", scope="tenant",
                                              tags=("shipment:{id}",), invalidate_on_write=True)])
    app = ResponseCacheMiddleware(CompressionMiddleware(app), settings, store=redis_store)
"""

from __future__ import annotations

from freightscale.caching.backend import CacheBackend
from freightscale.caching.cdn import HttpPurger, PurgeDispatcher, PurgeHook
from freightscale.caching.entry import CacheEntry, decode_entry, encode_entry
from freightscale.caching.middleware import (
    CACHE_FILL_KEY,
    ResponseCacheMiddleware,
    add_cache_tags,
    get_response_cache,
)
from freightscale.caching.query import QueryCache
from freightscale.caching.rules import normalize_accept_encoding
from freightscale.caching.singleflight import SingleFlight
from freightscale.settings.cache import CacheRule, CacheSettings

__all__ = [
    "CACHE_FILL_KEY",
    "CacheBackend",
    "CacheEntry",
    "CacheRule",
    "CacheSettings",
    "HttpPurger",
    "PurgeDispatcher",
    "PurgeHook",
    "QueryCache",
    "ResponseCacheMiddleware",
    "SingleFlight",
    "add_cache_tags",
    "decode_entry",
    "encode_entry",
    "get_response_cache",
    "normalize_accept_encoding",
]
