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
from collections.abc import Callable, Sequence
from typing import Literal

import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.asyncio.cluster import RedisCluster

from freightscale.backends.redis import RedisClient, create_redis_client
from freightscale.context import get_tenant_id
from freightscale.errors import problem_response
from freightscale.exceptions import ConfigurationError, StoreUnavailableError
from freightscale.ratelimit.approximate import ApproximateCounters
from freightscale.ratelimit.fallback import FailoverBackend
from freightscale.ratelimit.headers import SingleLimitHeaders, render_headers, retry_after
from freightscale.ratelimit.keys import ClientIP, TrustedProxies, hashed, key_for
from freightscale.ratelimit.redis_backend import RedisLimitBackend
from freightscale.ratelimit.rules import (
    PlanCache,
    PlanLoader,
    Rule,
    compile_path,
    rules_from_settings,
)
from freightscale.ratelimit.storage import (
    STRATEGY_CODES,
    MemoryLimitBackend,
)
from freightscale.settings.ratelimit import RateLimitSettings
from freightscale.settings.redis import RedisSettings
from freightscale.telemetry import get_counter
from freightscale.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RateLimitMiddleware"]

logger = logging.getLogger("freightscale.ratelimit")
# rule, outcome (allowed, limited, shadow_limited): bounded, never the key
_decisions = get_counter("freightscale.ratelimit.decisions")
_SAFE_KEY = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
_SHADOW_LOG_EVERY = 10.0
_LIST_FIELDS = frozenset((b"ratelimit", b"ratelimit-policy"))  # structured lists: layers combine
_MAX_ROUTES = 4096  # cached path -> rule decisions
_MAX_TAGS = 10_000  # cached raw key -> counter tag, per rule
_MAX_CACHED_KEY = 128  # longer raw keys are hashed on every request, never cached


def _safe_key(raw: str) -> str:
    # Hostile or long values never reach Redis raw (and never carry '{' / '}',
    # which would break the Cluster hash tag).
    return raw if _SAFE_KEY.fullmatch(raw) else "h:" + hashed(raw)


class _Route:
    """One rule compiled for the hot path.

    Holds what does not change from request to request: the counter tag's
    prefix (``<rule>:<strategy>:``) and a bounded cache of tags by raw key,
    the metric attributes of each outcome, and, for a one-limit rule sent
    with the ``draft`` headers only, the constant parts of those headers.
    """

    __slots__ = (
        "_api_key_header",
        "_by_ip",
        "_client_ip",
        "_prefix",
        "_tags",
        "allowed",
        "limited",
        "plan",
        "rule",
        "shadow_limited",
        "single",
    )

    def __init__(self, rule: Rule, middleware: RateLimitMiddleware) -> None:
        self.rule = rule
        self.plan = rule.plan
        self._prefix = f"{rule.name}:{STRATEGY_CODES[rule.strategy]}:"
        self._tags: dict[str, str] = {}
        self._by_ip = rule.key == "ip"
        self._client_ip = middleware._client_ip
        self._api_key_header = middleware._api_key_header
        # The decision counters' series of this rule: counting is an integer addition.
        self.allowed = _decisions.series({"rule": rule.name, "outcome": "allowed"})
        self.limited = _decisions.series({"rule": rule.name, "outcome": "limited"})
        self.shadow_limited = _decisions.series({"rule": rule.name, "outcome": "shadow_limited"})
        self.single = None
        if len(rule.limits) == 1 and tuple(middleware._styles) == ("draft",):
            item = rule.limits[0]
            self.single = SingleLimitHeaders(rule.name, item.amount, item.get_expiry())

    def tag(self, scope: Scope) -> str | None:
        """The request's counter tag ``<rule>:<strategy>:<key>``, or None to skip the rule."""
        key = self.rule.key
        if self._by_ip:
            raw = "ip:" + self._client_ip(scope)
        elif callable(key):
            custom = key(scope)
            if custom is None:
                return None
            raw = "c:" + custom
        else:
            raw = key_for(key, scope, self._client_ip, self._api_key_header)
        tag = self._tags.get(raw)
        if tag is None:
            tag = self._prefix + _safe_key(raw)
            if len(raw) <= _MAX_CACHED_KEY:  # long (hashed) keys are not kept in memory
                if len(self._tags) >= _MAX_TAGS:
                    self._tags.clear()
                self._tags[raw] = tag
        return tag


class RateLimitMiddleware:
    """Limit requests per IP, user, tenant, API key or custom key.

    Args:
        app: the ASGI app to protect.
        config: the rate-limit settings section (rules, headers, outage policy).
        rules: rules built in code (replace the ones from ``config``).
        redis: Redis settings or a URL (the middleware opens and closes its own
            client), a redis-py asyncio client, or a function returning the
            shared client once it is open (``lambda: stack.redis``; until it
            returns one, counters stay in this process). None: this process only.
        plan_loader: async ``tenant_id -> limits`` for rules keyed by tenant
            (a subscription plan); results are cached (``plan_cache_*``).
        layer: ``main`` (routes + default rule) or ``ip`` (the per-IP rule
            from ``ip_limits``, meant to run before authentication).
        redis_prefix: key prefix for a client or provider (default
            ``fs:<key_prefix>``; with settings or a URL it is
            ``<redis.key_prefix>:<key_prefix>``).
    """

    def __init__(
        self,
        app: ASGIApp,
        config: RateLimitSettings | None = None,
        *,
        rules: Sequence[Rule] | None = None,
        redis: RedisSettings | str | RedisClient | Callable[[], RedisClient | None] | None = None,
        plan_loader: PlanLoader | None = None,
        layer: Literal["main", "ip"] = "main",
        redis_prefix: str | None = None,
    ) -> None:
        self.app = app
        self.config = config = config or RateLimitSettings()
        # Compiled below (and cached per path): a tuple, fixed for the middleware's life.
        self.rules = tuple(rules if rules is not None else rules_from_settings(config, layer=layer))
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
        self.plans = (
            PlanCache(
                plan_loader,
                ttl=config.plan_cache_ttl,
                size=config.plan_cache_size,
                timeout=config.plan_timeout,
            )
            if plan_loader is not None
            else None
        )
        self._shadow_logged: dict[str, float] = {}
        # The per-request work that depends only on the rule or the path is done
        # once: rule matching is cached per path, each rule keeps its tag prefix,
        # metric labels and constant header parts.
        self._compiled = [_Route(rule, self) for rule in self.rules]
        self._by_path = not any(rule.match.methods for rule in self.rules)
        self._routes: dict[object, _Route | None] = {}
        self.memory = MemoryLimitBackend()
        self.shared: FailoverBackend | None = None
        self.approximate: ApproximateCounters | None = None
        self._provider: Callable[[], RedisClient | None] | None = None
        self._redis_prefix = redis_prefix or f"fs:{config.key_prefix}"
        if isinstance(redis, aioredis.Redis | RedisCluster):
            self._attach(redis, self._redis_prefix, owns=False)
        elif callable(redis):
            self._provider = redis  # resolved at startup() or on the first request
        elif redis is not None:
            client, prefix, owns = _client(redis, config)
            self._attach(client, prefix, owns=owns)

    def _attach(self, client: RedisClient, prefix: str, *, owns: bool) -> None:
        config = self.config
        self.shared = FailoverBackend(
            RedisLimitBackend(client, prefix, owns_client=owns, timeout=config.timeout),
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

    def _resolve(self) -> None:
        assert self._provider is not None
        client = self._provider()
        if client is not None:
            self._provider = None
            self._attach(client, self._redis_prefix, owns=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            route = self._routes[path if self._by_path else (method, path)]
        except KeyError:
            route = self._route(path, method)
        if route is None:  # exempt, or no rule covers it
            await self.app(scope, receive, send)
            return
        rule = route.rule
        tag = route.tag(scope)
        if tag is None:
            await self.app(scope, receive, send)
            return
        items = rule.limits
        if route.plan and self.plans is not None:
            tenant = get_tenant_id(scope)
            if tenant is not None:
                items = await self.plans.limits_for(tenant, items)
        if self._provider is not None:
            self._resolve()
        try:
            if self.shared is None:
                states = await self.memory.hit(tag, items, rule.strategy, rule.cost)
            elif rule.approximate and self.approximate is not None:
                states = self.approximate.hit(tag, items, rule.cost)
            else:
                states, _degraded = await self.shared.hit(
                    tag, items, rule.strategy, rule.cost, rule=rule.name
                )
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
        if route.single is not None and items is rule.limits:
            state = states[0]
            allowed = state.allowed
            headers = route.single.render(state.remaining, state.reset_at, now)
        else:
            allowed = all(s.allowed for s in states)
            headers = render_headers(rule.name, states, self._styles, now)
        if allowed:
            route.allowed.value += 1
        elif rule.shadow:
            route.shadow_limited.value += 1
            self._log_shadow(rule, now)
        else:
            route.limited.value += 1
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
        single_valued = self._single_valued

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                existing = message.get("headers", ())
                if single_valued:
                    # An inner layer already described its (tighter, later) limit:
                    # the single-valued legacy fields must not appear twice.
                    existing = list(existing)
                    present = {name.lower() for name, _ in existing}
                    extra = [h for h in headers if h[0] not in present or h[0] in _LIST_FIELDS]
                    message["headers"] = [*existing, *extra]
                else:
                    message["headers"] = [*existing, *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _route(self, path: str, method: str) -> _Route | None:
        """The compiled rule covering a request (None: exempt or unmatched), cached."""
        route = None
        if self._exempt is None or not self._exempt.fullmatch(path):
            index = next(
                (i for i, r in enumerate(self.rules) if r.match.matches(path, method)), None
            )
            if index is not None:
                route = self._compiled[index]
        routes = self._routes
        if len(routes) >= _MAX_ROUTES:  # paths carry ids: bounded, simply restarted
            routes.clear()
        routes[path if self._by_path else (method, path)] = route
        return route

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
        if self._provider is not None:
            self._resolve()
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
