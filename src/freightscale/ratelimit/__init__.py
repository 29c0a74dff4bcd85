"""Rate limiting on the ``limits`` package: rules, keys, headers, fallbacks.

::

    app = RateLimitMiddleware(app, RateLimitSettings(default="10/second; 1000/hour"),
                              redis="redis://localhost:6379/0")

See ``docs/ratelimit.md``.
"""

from __future__ import annotations

from freightscale.ratelimit.approximate import ApproximateCounters
from freightscale.ratelimit.fallback import FailoverBackend
from freightscale.ratelimit.headers import render_headers
from freightscale.ratelimit.keys import ClientIP, TrustedProxies
from freightscale.ratelimit.middleware import RateLimitMiddleware
from freightscale.ratelimit.redis_backend import RedisLimitBackend
from freightscale.ratelimit.rules import KeyFunc, PathMatcher, PlanLoader, Rule, parse_limits
from freightscale.ratelimit.storage import (
    LimitBackend,
    LimitState,
    MemoryLimitBackend,
)

__all__ = [
    "ApproximateCounters",
    "ClientIP",
    "FailoverBackend",
    "KeyFunc",
    "LimitBackend",
    "LimitState",
    "MemoryLimitBackend",
    "PathMatcher",
    "PlanLoader",
    "RateLimitMiddleware",
    "RedisLimitBackend",
    "Rule",
    "TrustedProxies",
    "parse_limits",
    "render_headers",
]
