"""Apps for ``bench/cache_compression.py`` (one uvicorn process per variant).

Each variant serves ``GET /shipments``: ~20 KB of JSON serialized per request
by the bare handler. ``VARIANTS`` maps a variant name to (attribute,
Accept-Encoding the load generator sends).
"""

from __future__ import annotations

import os
import random

import brotli
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from freightscale.caching import ResponseCacheMiddleware
from freightscale.compression import CompressionMiddleware
from freightscale.settings.cache import CacheRule, CacheSettings
from freightscale.settings.compression import CompressionSettings

PATH = "/shipments"
_rng = random.Random(7)
PAYLOAD = [
    {
        "id": i,
        "reference": f"SHP-{i:06d}",
        "status": _rng.choice(["booked", "in_transit", "delivered", "held"]),
        "origin": _rng.choice(["Rotterdam", "Hamburg", "Antwerp", "Le Havre"]),
        "destination": _rng.choice(["Lyon", "Milan", "Basel", "Munich"]),
        "weight_kg": round(_rng.uniform(10, 9000), 2),
        "carrier": f"Carrier {i % 7}",
        "eta": f"2026-12-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
    }
    for i in range(120)
]


async def shipments(request: Request) -> Response:
    return JSONResponse(PAYLOAD)


def make_app() -> Starlette:
    return Starlette(routes=[Route(PATH, shipments)])


bare = make_app()
starlette_gzip = GZipMiddleware(make_app(), minimum_size=500)  # its default level: 9
fs_gzip = CompressionMiddleware(make_app(), CompressionSettings(encodings=("gzip",)))  # level 6
fs_gzip9 = CompressionMiddleware(make_app(), CompressionSettings(encodings=("gzip",), gzip_level=9))
fs_br = CompressionMiddleware(make_app(), CompressionSettings(brotli_quality=4))


def _brotli_asgi() -> object:
    from brotli_asgi import BrotliMiddleware

    return BrotliMiddleware(make_app(), quality=4, minimum_size=500)


brotli_asgi = _brotli_asgi()

_RULES = CacheSettings(rules=(CacheRule(path=PATH, ttl=3600),))


def _cached(l1: bool) -> ResponseCacheMiddleware:
    from freightscale.stores.redis import RedisStore

    url = os.environ.get("FREIGHTSCALE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = os.environ.get("FREIGHTSCALE_BENCH_PREFIX", "fsbench")
    settings = _RULES.model_copy(update={"l1_enabled": l1})
    store = RedisStore.from_url(url, key_prefix=prefix)
    return ResponseCacheMiddleware(CompressionMiddleware(make_app()), settings, store=store)


cache_redis = _cached(l1=False)
cache_l1 = _cached(l1=True)

_PRE = brotli.compress(JSONResponse(PAYLOAD).body, quality=4)
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-encoding", b"br"),
    (b"content-length", str(len(_PRE)).encode()),
    (b"vary", b"Accept-Encoding"),
]


async def ceiling(scope, receive, send):  # type: ignore[no-untyped-def]
    """Raw ASGI app sending pre-encoded bytes: the upper bound of any cache hit."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _PRE})


VARIANTS = {
    "bare": ("bare", ""),
    "starlette-gzip": ("starlette_gzip", "gzip"),
    "fs-gzip6": ("fs_gzip", "gzip"),
    "fs-gzip9": ("fs_gzip9", "gzip"),
    "brotli-asgi": ("brotli_asgi", "br"),
    "fs-br4": ("fs_br", "br"),
    "cache-redis-hit": ("cache_redis", "br"),
    "cache-l1-hit": ("cache_l1", "br"),
    "ceiling-raw-asgi": ("ceiling", "br"),
}
