"""Rules: which limits apply to a request, counted by what.

A :class:`Rule` is data (limits, strategy, cost, key, flags) plus a
compiled path matcher. :func:`rules_from_settings` turns a
:class:`~freightscale.settings.ratelimit.RateLimitSettings` into the ordered
rule list the middleware walks (routes first, then the default rule).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cachetools import TTLCache
from limits import RateLimitItem, parse_many

from freightscale.exceptions import ConfigurationError
from freightscale.settings.ratelimit import (
    KeyName,
    RateLimitSettings,
    StrategyName,
    check_limits,
)
from freightscale.types import Scope

__all__ = [
    "KeyFunc",
    "PathMatcher",
    "PlanCache",
    "PlanLoader",
    "Rule",
    "compile_path",
    "parse_limits",
    "rules_from_settings",
]

KeyFunc = Callable[[Scope], "str | None"]
"""A custom key function: the request's scope to a key, or None to skip the rule."""

PlanLoader = Callable[[str], Awaitable["str | Sequence[RateLimitItem] | None"]]
"""Async loader of a tenant's limits (its plan): tenant id to limits, or None for the rule's own."""

logger = logging.getLogger("freightscale.ratelimit")
_NAME_CLEAN = re.compile(r"[^A-Za-z0-9_.-]+")


def parse_limits(
    value: str | Sequence[RateLimitItem], setting: str = "limits"
) -> tuple[RateLimitItem, ...]:
    """Parse ``limits`` notation (or pass items through), most specific first.

    Raises:
        ConfigurationError: naming ``setting`` and the bad value.
    """
    if not isinstance(value, str):
        return tuple(value)
    try:
        check_limits(value)
    except ValueError as exc:
        raise ConfigurationError(f"{setting}: {exc}") from None
    return tuple(parse_many(value))


def compile_path(pattern: str) -> re.Pattern[str]:
    """Compile a path pattern: ``*`` one segment part, ``**`` anything, ``{x}`` a segment."""
    out = []
    for part in re.split(r"(\*\*|\*|\{[^}/]*\})", pattern):
        if part == "**":
            out.append(".*")
        elif part == "*":
            out.append("[^/]*")
        elif part.startswith("{") and part.endswith("}"):
            out.append("[^/]+")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out) + "/?")


@dataclass(frozen=True, slots=True)
class PathMatcher:
    """Matches a request path and method against one pattern."""

    pattern: str | None = None
    methods: frozenset[str] = frozenset()
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pattern is not None:
            object.__setattr__(self, "_regex", compile_path(self.pattern))

    def matches(self, path: str, method: str) -> bool:
        """True when ``path`` (and ``method``, if methods are set) match."""
        if self.methods and method not in self.methods:
            return False
        return self._regex is None or self._regex.fullmatch(path) is not None


@dataclass(frozen=True, slots=True)
class Rule:
    """One rate-limit rule.

    Attributes:
        name: policy name in headers, metrics (bounded cardinality) and keys.
        limits: the limits, all of which a request must pass.
        key: ``ip``, ``user``, ``tenant``, ``api_key`` or a custom function.
        strategy: ``fixed-window``, ``moving-window`` or ``sliding-window-counter``.
        match: which requests the rule covers (None pattern: every path).
        cost: units one request consumes.
        shadow: report but never block.
        approximate: decide locally, reconcile with Redis in the background.
        plan: take the limits from the plan loader (by tenant) when one is configured.
    """

    name: str
    limits: tuple[RateLimitItem, ...]
    key: KeyName | KeyFunc = "ip"
    strategy: StrategyName = "moving-window"
    match: PathMatcher = field(default_factory=PathMatcher)
    cost: int = 1
    shadow: bool = False
    approximate: bool = False
    plan: bool = False

    def __post_init__(self) -> None:
        if not self.limits:
            raise ConfigurationError(f"rate-limit rule {self.name!r} has no limits")
        if self.cost < 1:
            raise ConfigurationError(f"rate-limit rule {self.name!r}: cost must be >= 1")
        if self.approximate and self.strategy != "fixed-window":
            # Local counters reconcile as fixed-window counts; say so rather than surprise.
            object.__setattr__(self, "strategy", "fixed-window")

    @classmethod
    def create(
        cls,
        name: str,
        limits: str | Sequence[RateLimitItem],
        *,
        path: str | None = None,
        methods: Iterable[str] = (),
        **options: object,
    ) -> Rule:
        """Build a rule from ``limits`` notation and an optional path pattern."""
        return cls(
            name=name,
            limits=parse_limits(limits, f"rule {name!r}"),
            match=PathMatcher(path, frozenset(m.upper() for m in methods)),
            **options,  # type: ignore[arg-type]
        )


def _route_name(path: str, methods: tuple[str, ...]) -> str:
    base = _NAME_CLEAN.sub("_", path.strip("/")).strip("_") or "root"
    return "-".join((base, *methods)).lower()[:64]


def rules_from_settings(settings: RateLimitSettings, *, layer: str = "main") -> list[Rule]:
    """The ordered rules of one middleware layer.

    Args:
        settings: the rate-limit section.
        layer: ``main`` (routes, then the default rule) or ``ip`` (the
            pre-authentication per-IP rule from ``ip_limits``).
    """
    if layer == "ip":
        if not settings.ip_limits.strip():
            return []
        return [
            Rule(
                "ip",
                parse_limits(settings.ip_limits, "FREIGHTSCALE_RATELIMIT__IP_LIMITS"),
                key="ip",
                strategy=settings.strategy,
            )
        ]
    rules = []
    for i, route in enumerate(settings.routes):
        setting = f"FREIGHTSCALE_RATELIMIT__ROUTES[{i}]"
        rules.append(
            Rule(
                route.name or _route_name(route.path, route.methods),
                parse_limits(route.limits, setting),
                key=route.key or settings.key,
                strategy=route.strategy or settings.strategy,
                match=PathMatcher(route.path, frozenset(route.methods)),
                cost=route.cost,
                shadow=route.shadow,
                approximate=route.approximate,
                plan=(route.key or settings.key) == "tenant",
            )
        )
    if settings.default.strip():
        rules.append(
            Rule(
                "default",
                parse_limits(settings.default, "FREIGHTSCALE_RATELIMIT__DEFAULT"),
                key=settings.key,
                strategy=settings.strategy,
                shadow=settings.shadow,
                approximate=settings.approximate,
                plan=settings.key == "tenant",
            )
        )
    return rules


class PlanCache:
    """Tenant plans from a loader, cached (bounded size and TTL), failures contained.

    Args:
        loader: async ``tenant_id -> limits`` (notation or items), None for the rule's own.
        ttl: seconds an answer is kept (0: not cached).
        size: most tenants cached.
        timeout: seconds the loader may take.
    """

    def __init__(self, loader: PlanLoader, *, ttl: float, size: int, timeout: float) -> None:
        self.loader = loader
        self.timeout = timeout
        self._cache: TTLCache[str, tuple[RateLimitItem, ...] | None] = TTLCache(size, ttl or 1e-9)

    async def limits_for(
        self, tenant: str, default: tuple[RateLimitItem, ...]
    ) -> tuple[RateLimitItem, ...]:
        """The tenant's limits, or ``default`` when it has no plan or the loader fails."""
        try:
            plan = self._cache[tenant]
        except KeyError:
            try:
                async with asyncio.timeout(self.timeout):
                    loaded = await self.loader(tenant)
                plan = None if loaded is None else parse_limits(loaded, f"plan of {tenant!r}")
            except Exception as exc:
                # A broken loader or plan must not take requests down: use the
                # rule's own limits, and do not cache, so a fix applies at once.
                logger.warning("rate-limit plan loader failed for a tenant: %r", exc)
                return default
            self._cache[tenant] = plan
        return plan or default
