"""The app the multi-process exactness test runs under uvicorn (configured by env)."""

from __future__ import annotations

import os

from freightscale.ratelimit import RateLimitMiddleware
from freightscale.settings.ratelimit import RateLimitSettings
from freightscale.types import Receive, Scope, Send


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """A small JSON route (lifespan is not used: uvicorn runs with --lifespan off)."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


app = RateLimitMiddleware(
    hello,
    RateLimitSettings(
        default=os.environ["RL_LIMITS"],
        key="ip",
        strategy=os.environ.get("RL_STRATEGY", "moving-window"),  # type: ignore[arg-type]
        key_prefix=os.environ["RL_PREFIX"],
        timeout=2.0,
    ),
    redis=os.environ["RL_REDIS_URL"],
)
