"""Rate-limit variants: no limiter vs freightscale (memory, Redis, approximate) vs slowapi.

Every limited variant applies the same rule — one fixed-window limit of
1,000,000 per minute keyed by client IP, high enough never to trigger — to
the same small Starlette JSON route. Redis variants use ``BENCH_REDIS_URL``
(default ``redis://127.0.0.1:6379/0``) and a per-process key prefix.
"""

from __future__ import annotations

import os
import uuid

from slowapi import Limiter
from slowapi.middleware import SlowAPIASGIMiddleware, SlowAPIMiddleware
from slowapi.util import get_remote_address
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.ratelimit import RateLimitMiddleware
from freightscale.settings.ratelimit import RateLimitSettings

PATH = "/json"
"""The path wrk requests."""

LIMIT = "1000000/minute"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_RUN = uuid.uuid4().hex[:8]


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"message": "hello", "items": [1, 2, 3]})


def make_app() -> Starlette:
    """The app every variant wraps: one JSON route."""
    return Starlette(routes=[Route(PATH, hello)])


def _settings(**kw: object) -> RateLimitSettings:
    return RateLimitSettings(
        default=LIMIT, key="ip", strategy="fixed-window", key_prefix=f"bench{_RUN}", **kw
    )  # type: ignore[arg-type]


def _slowapi(storage_uri: str, *, asgi: bool) -> Starlette:
    app = make_app()
    app.state.limiter = Limiter(
        key_func=get_remote_address,
        default_limits=[LIMIT],
        storage_uri=storage_uri,
        strategy="fixed-window",
        key_prefix=f"benchslow{_RUN}",
        headers_enabled=True,  # both libraries send rate-limit headers
    )
    app.add_middleware(SlowAPIASGIMiddleware if asgi else SlowAPIMiddleware)
    return app


no_limiter = make_app()
fs_memory = RateLimitMiddleware(make_app(), _settings())
# timeout=10: a bench of the Redis path must not silently fail over to memory
fs_redis = RateLimitMiddleware(make_app(), _settings(timeout=10.0), redis=REDIS_URL)
fs_redis_approx = RateLimitMiddleware(
    make_app(), _settings(approximate=True, timeout=10.0), redis=REDIS_URL
)
slowapi_memory = _slowapi("memory://", asgi=True)
slowapi_redis = _slowapi(REDIS_URL, asgi=True)
slowapi_memory_basehttp = _slowapi("memory://", asgi=False)

VARIANTS = {
    "rl-none": "no_limiter",
    "rl-fs-memory": "fs_memory",
    "rl-fs-redis": "fs_redis",
    "rl-fs-redis-approx": "fs_redis_approx",
    "rl-slowapi-memory": "slowapi_memory",
    "rl-slowapi-redis": "slowapi_redis",
    "rl-slowapi-memory-basehttp": "slowapi_memory_basehttp",
}
"""Variant name -> attribute of this module holding the ASGI app."""

DEFAULT = (
    "rl-none",
    "rl-fs-memory",
    "rl-fs-redis",
    "rl-fs-redis-approx",
    "rl-slowapi-memory",
    "rl-slowapi-redis",
)
"""The rate-limit comparison; the first is the baseline."""
