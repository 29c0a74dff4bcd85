"""Settings of the rate limiter.

Two layers share this section (see ``docs/ratelimit.md``): the cheap per-IP
layer that runs before authentication (``ip_limits``) and the main layer after
it (``default`` plus ``routes``), keyed by user, tenant, API key or IP.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from freightscale.settings._base import Section

__all__ = ["KeyName", "RateLimitSettings", "RouteLimit", "StrategyName", "check_limits"]

StrategyName = Literal["fixed-window", "moving-window", "sliding-window-counter"]
"""The three ``limits`` strategies."""

KeyName = Literal["ip", "user", "tenant", "api_key"]
"""What a rule counts by; ``user`` / ``tenant`` / ``api_key`` fall back to the IP
for requests that have none."""

HeaderStyle = Literal["draft", "legacy", "x"]


def check_limits(value: str, *, allow_empty: bool = False) -> str:
    """Validate a ``limits`` rate string (``10/second; 1000/hour``).

    Raises:
        ValueError: naming the bad value and showing the expected notation.
    """
    from limits import parse_many

    if allow_empty and not value.strip():
        return value
    try:
        items = parse_many(value)
    except ValueError:
        items = []
    if not items:
        raise ValueError(
            f"{value[:80]!r} is not a rate-limit string; expected `limits` notation such as "
            "'10/second' or '10/second; 1000/hour' (amount/[multiple] second|minute|hour|day)"
        )
    for item in items:
        if item.amount < 1:
            raise ValueError(f"{value[:80]!r}: a limit's amount must be at least 1")
    return value


class RouteLimit(Section):
    """One per-route rule: a path pattern, methods and their own limits."""

    path: str = Field(min_length=1, max_length=512, pattern=r"^/")
    """Path pattern: ``*`` matches one segment part, ``**`` anything, ``{name}``
    one whole segment (``/shipments/{id}/documents``)."""

    limits: str
    """Limits of this route in ``limits`` notation (``5/minute; 100/day``)."""

    methods: tuple[str, ...] = ()
    """HTTP methods the rule applies to (empty: every method)."""

    name: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    """Policy name in headers, metrics and Redis keys (default: derived from the path)."""

    key: KeyName | None = None
    """What to count by (default: the section's ``key``)."""

    strategy: StrategyName | None = None
    """Algorithm (default: the section's ``strategy``)."""

    cost: int = Field(default=1, ge=1, le=1_000_000)
    """How many units one request consumes."""

    shadow: bool = False
    """Count and report, but never block (roll out a new limit safely)."""

    approximate: bool = False
    """Decide locally and reconcile with Redis every ``sync_interval`` (fast,
    may overshoot; see the docs for the bound)."""

    @field_validator("limits")
    @classmethod
    def _check(cls, value: str) -> str:
        return check_limits(value)

    @field_validator("methods")
    @classmethod
    def _upper(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m.upper() for m in value)


class RateLimitSettings(Section):
    """Rate limits, their storage and the outage policy."""

    enabled: bool = False
    """Install the rate-limit middleware in ``build_stack``."""

    default: str = "100/second"
    """The default rule's limits, in ``limits`` notation (``10/second; 1000/hour``).
    Empty: no default rule (only ``routes`` are limited)."""

    key: KeyName = "user"
    """What the default rule counts by; anonymous requests fall back to the client IP."""

    strategy: StrategyName = "moving-window"
    """Algorithm of the default rule and of routes that do not name one."""

    routes: tuple[RouteLimit, ...] = ()
    """Per-route rules, first match wins (JSON list in the environment)."""

    ip_limits: str = ""
    """Limits of the per-IP layer installed before authentication (empty: no such layer)."""

    exempt_paths: tuple[str, ...] = ("/health", "/healthz", "/livez", "/readyz", "/metrics")
    """Path patterns never limited (same pattern syntax as routes)."""

    shadow: bool = False
    """Shadow mode for the default rule: count and report, never block."""

    approximate: bool = False
    """Approximate mode for the default rule (see ``RouteLimit.approximate``)."""

    fail_mode: Literal["open", "closed"] = "open"
    """When Redis is down: ``open`` falls back to a per-process limiter,
    ``closed`` answers 503."""

    timeout: float = Field(default=0.05, gt=0, le=10)
    """Seconds the limiter waits for Redis before applying ``fail_mode``."""

    retry_interval: float = Field(default=1.0, gt=0, le=300)
    """During an outage, seconds between attempts to use Redis again."""

    sync_interval: float = Field(default=0.05, ge=0.001, le=60)
    """Seconds between reconciliations of approximate-mode counters with Redis."""

    trusted_proxies: tuple[str, ...] = ()
    """Networks (CIDR) of proxies whose ``X-Forwarded-For`` / ``Forwarded`` is believed."""

    api_key_header: str = Field(default="x-api-key", min_length=1, max_length=64)
    """Header carrying the API key for ``key="api_key"`` (its hash is the key)."""

    headers: tuple[HeaderStyle, ...] = ("draft",)
    """Header sets to send: ``draft`` (``RateLimit-Policy`` / ``RateLimit``,
    draft-ietf-httpapi-ratelimit-headers -07+), ``legacy`` (``RateLimit-Limit``,
    ``-Remaining``, ``-Reset``), ``x`` (``X-RateLimit-*``)."""

    key_prefix: str = Field(
        default="rl", min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.:-]+$"
    )
    """Prefix of the limiter's Redis keys (after the Redis section's ``key_prefix``)."""

    plan_cache_ttl: float = Field(default=60.0, ge=0, le=86_400)
    """Seconds a tenant plan returned by the plan loader is cached."""

    plan_timeout: float = Field(default=1.0, gt=0, le=60)
    """Seconds the plan loader may take; on timeout or error the rule's own limits apply."""

    plan_cache_size: int = Field(default=10_000, ge=1, le=10_000_000)
    """Most tenant plans cached at once."""

    max_local_keys: int = Field(default=100_000, ge=100, le=10_000_000)
    """Most keys the approximate-mode counters keep in memory per process."""

    @field_validator("default", "ip_limits")
    @classmethod
    def _check_limits(cls, value: str) -> str:
        return check_limits(value, allow_empty=True)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(
                    f"{net[:60]!r} is not an IP network; "
                    "use CIDR such as '10.0.0.0/8' or a single address"
                ) from None
        return value

    @field_validator("headers")
    @classmethod
    def _dedupe(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))
