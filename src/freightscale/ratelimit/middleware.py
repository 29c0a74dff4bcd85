"""``RateLimitMiddleware``: pure ASGI, rules from settings or code.

Per request: skip exempt paths, pick the first matching rule, compute its
key, hit every limit of the rule in one storage call, then either answer
429 problem+json (with ``Retry-After``) or pass the request on and add the
rate-limit headers to the response. Shadow rules report but never block.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from typing import Literal

from cachetools import TTLCache
from limits import RateLimitItem
from opentelemetry import metrics
from pydantic import SecretStr

from freightscale.backends.redis import RedisClient, create_redis_client
from freightscale.errors import problem_response
from freightscale.exceptions import ConfigurationError, StoreUnavailableError
from freightscale.ratelimit.approximate import ApproximateCounters
from freightscale.ratelimit.fallback import FailoverBackend
from freightscale.ratelimit.headers import render_headers, retry_after
from freightscale.ratelimit.keys import ClientIP, TrustedProxies, hashed, key_for
from freightscale.ratelimit.rules import (
    PlanLoader,
    Rule,
    compile_path,
    parse_limits,
    rules_from_settings,
)
from freightscale.ratelimit.storage import (
    STRATEGY_CODES,
    LimitState,
    MemoryLimitBackend,
    RedisLimitBackend,
)
from freightscale.settings.ratelimit import RateLimitSettings
from freightscale.settings.redis import RedisSettings
from freightscale.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RateLimitMiddleware"]

logger = logging.getLogger("freightscale.ratelimit")
_meter = metrics.get_meter("freightscale")
_decisions = _meter.create_counter(
    "freightscale.ratelimit.requests",
    description="Rate-limit decisions by rule and outcome (allowed, limited, shadow_limited)",
)
_SAFE_KEY = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
_SHADOW_LOG_EVERY = 10.0
_LIST_FIELDS = frozenset((b"ratelimit", b"ratelimit-policy"))  # structured lists: layers combine


class RateLimitMiddleware:
    """Limit requests per IP, user, tenant, API key or custom key.

    Args:
        app: the ASGI app to protect.
        config: the rate-limit settings section (rules, headers, outage policy).
        rules: rules built in code (replace the ones from ``config``).
        redis: Redis settings, a URL or a redis-py asyncio client for shared
            counters across instances; None keeps counters in this process.
        plan_loader: async ``tenant_id -> limits`` for rules keyed by tenant
            (a subscription plan); results are cached (``plan_cache_*``).
        layer: ``main`` (routes + default rule) or ``ip`` (the per-IP rule
            from ``ip_limits``, meant to run before authentication).
    """

    def __init__(
        self,
        app: ASGIApp,
        config: RateLimitSettings | None = None,
        *,
        rules: Sequence[Rule] | None = None,
        redis: RedisSettings | str | RedisClient | None = None,
        plan_loader: PlanLoader | None = None,
        layer: Literal["main", "ip"] = "main",
    ) -> None:
        self.app = app
        self.config = config = config or RateLimitSettings()
        self.rules = list(rules) if rules is not None else rules_from_settings(config, layer=layer)
        self.layer = layer
        self._exempt = (
            re.compile("|".join(f"(?:{compile_path(p).pattern})" for p in config.exempt_paths))
            if config.exempt_paths
            else None
        )
        self._client_ip = ClientIP(TrustedProxies(config.trusted_proxies))
        self._api_key_header = config.api_key_header.lower().encode("latin-1")
        self._styles = config.headers
        self._single_valued = "legacy" in config.headers or "x" in config.headers
        self.plan_loader = plan_loader
        self._plans: TTLCache[str, tuple[RateLimitItem, ...] | None] = TTLCache(
            config.plan_cache_size, config.plan_cache_ttl or 1e-9
        )
        self._shadow_logged: dict[str, float] = {}
        self.memory = MemoryLimitBackend()
        self.shared: FailoverBackend | None = None
        self.approximate: ApproximateCounters | None = None
        if redis is not None:
            client, prefix, owns = _client(redis, config)
            self.shared = FailoverBackend(
                RedisLimitBackend(client, prefix, owns_client=owns),
                fail_mode=config.fail_mode,
                timeout=config.timeout,
                retry_interval=config.retry_interval,
                fallback=self.memory,
            )
            if any(r.approximate for r in self.rules):
                self.approximate = ApproximateCounters(
                    client,
                    prefix,
                    sync_interval=config.sync_interval,
                    max_keys=config.max_local_keys,
                    failover=self.shared,
                )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if self._exempt is not None and self._exempt.fullmatch(path):
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        rule = next((r for r in self.rules if r.match.matches(path, method)), None)
        if rule is None:
            await self.app(scope, receive, send)
            return
        key = self._key(rule, scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        items = await self._limits(rule, scope)
        tag = f"{rule.name}:{STRATEGY_CODES[rule.strategy]}:{key}"
        try:
            states = await self._hit(rule, tag, items)
        except StoreUnavailableError as exc:
            response = problem_response(
                503,
                detail=str(exc),
                instance=path,
                headers={"Retry-After": str(max(1, round(self.config.retry_interval)))},
            )
            await response(scope, receive, send)
            return
        now = time.time()
        headers = render_headers(rule.name, states, self._styles, now)
        if all(s.allowed for s in states):
            _decisions.add(1, {"rule": rule.name, "outcome": "allowed"})
        elif rule.shadow:
            _decisions.add(1, {"rule": rule.name, "outcome": "shadow_limited"})
            self._log_shadow(rule, now)
        else:
            _decisions.add(1, {"rule": rule.name, "outcome": "limited"})
            seconds = retry_after(states, now)
            refused = next(s for s in states if not s.allowed)
            response = problem_response(
                429,
                detail=f"rate limit {rule.name!r} exceeded: {refused.item}",
                instance=path,
                headers={"Retry-After": str(seconds)},
                extra={"retry_after": seconds},
            )
            response.raw_headers.extend(headers)
            await response(scope, receive, send)
            return
        if not headers:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                existing = list(message.get("headers", ()))
                if self._single_valued:
                    # An inner layer already described its (tighter, later) limit:
                    # the single-valued legacy fields must not appear twice.
                    present = {name.lower() for name, _ in existing}
                    extra = [h for h in headers if h[0] not in present or h[0] in _LIST_FIELDS]
                else:
                    extra = headers
                message["headers"] = [*existing, *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _key(self, rule: Rule, scope: Scope) -> str | None:
        if callable(rule.key):
            raw = rule.key(scope)
            if raw is None:
                return None
            raw = "c:" + raw
        else:
            raw = key_for(rule.key, scope, self._client_ip, self._api_key_header)
        # Hostile or long values never reach Redis raw (and never carry '{' / '}',
        # which would break the Cluster hash tag).
        return raw if _SAFE_KEY.fullmatch(raw) else "h:" + hashed(raw)

    async def _limits(self, rule: Rule, scope: Scope) -> tuple[RateLimitItem, ...]:
        if not (rule.plan and self.plan_loader is not None):
            return rule.limits
        from freightscale.context import get_tenant_id

        tenant = get_tenant_id(scope)
        if tenant is None:
            return rule.limits
        try:
            plan = self._plans[tenant]
        except KeyError:
            try:
                async with asyncio.timeout(self.config.plan_timeout):
                    loaded = await self.plan_loader(tenant)
                plan = None if loaded is None else parse_limits(loaded, f"plan of {tenant!r}")
            except Exception as exc:
                # A broken loader or plan must not take requests down: use the
                # rule's own limits, and do not cache, so a fix applies at once.
                logger.warning("rate-limit plan loader failed for a tenant: %r", exc)
                return rule.limits
            self._plans[tenant] = plan
        return plan or rule.limits

    async def _hit(self, rule: Rule, tag: str, items: Sequence[RateLimitItem]) -> list[LimitState]:
        if self.shared is None:
            return await self.memory.hit(tag, items, rule.strategy, rule.cost)
        if rule.approximate and self.approximate is not None:
            return self.approximate.hit(tag, items, rule.cost)
        states, _degraded = await self.shared.hit(
            tag, items, rule.strategy, rule.cost, rule=rule.name
        )
        return states

    def _log_shadow(self, rule: Rule, now: float) -> None:
        last = self._shadow_logged.get(rule.name, 0.0)
        if now - last >= _SHADOW_LOG_EVERY:
            self._shadow_logged[rule.name] = now
            logger.info(
                "shadow rate limit %r would have refused a request (logged at most every %ss)",
                rule.name,
                _SHADOW_LOG_EVERY,
            )

    async def startup(self) -> None:
        """Warm up Redis (connection, Cluster topology, script) before traffic.

        Call from the app's lifespan start-up: without it the first request
        pays the connection set-up and, on a loaded machine, may exceed
        ``timeout`` and fail over for ``retry_interval``. Never raises: a
        down Redis at start-up is logged once and handled by ``fail_mode``.
        """
        if self.shared is None:
            return
        primary = self.shared.primary
        if isinstance(primary, RedisLimitBackend):
            try:
                async with asyncio.timeout(max(self.config.timeout, 5.0)):
                    await primary.warm_up()
            except Exception as exc:
                self.shared.record_failure(exc, rule="startup")

    async def aclose(self) -> None:
        """Stop background sync and close connections this middleware opened."""
        if self.approximate is not None:
            await self.approximate.aclose()
        if self.shared is not None:
            await self.shared.aclose()
        else:
            await self.memory.aclose()


def _client(
    redis: RedisSettings | str | RedisClient, config: RateLimitSettings
) -> tuple[RedisClient, str, bool]:
    if isinstance(redis, str):
        redis = RedisSettings(url=SecretStr(redis))
    if isinstance(redis, RedisSettings):
        if not redis.enabled:
            raise ConfigurationError(
                "RateLimitMiddleware got Redis settings with an empty FREIGHTSCALE_REDIS__URL; "
                "pass redis=None for per-process limits"
            )
        return create_redis_client(redis), f"{redis.key_prefix}:{config.key_prefix}", True
    return redis, f"fs:{config.key_prefix}", False
