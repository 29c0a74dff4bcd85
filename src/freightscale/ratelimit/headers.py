"""Rate-limit response headers.

``draft`` — the current IETF form (draft-ietf-httpapi-ratelimit-headers,
-07 and later; -09 at the time of writing): two structured-field lists with
one named item per limit::

    RateLimit-Policy: "default";q=100;w=60
    RateLimit: "default";r=42;t=17

``q`` quota, ``w`` window seconds, ``r`` remaining, ``t`` seconds until the
quota resets. A rule with several limits names each ``<rule>-<window>s``.
Two middleware layers (per-IP, per-user) each append their own items: both
fields are lists, so the combined field is still valid.

``legacy`` — ``RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (draft -06 and
earlier, reset in delta seconds); ``x`` — ``X-RateLimit-Limit`` /
``-Remaining`` / ``-Reset`` (reset as epoch seconds, GitHub style). Both
describe the limit closest to exhaustion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from freightscale.ratelimit.storage import LimitState

__all__ = ["SingleLimitHeaders", "policy_names", "render_headers", "retry_after"]


@lru_cache(maxsize=4096)
def policy_names(rule: str, windows: tuple[int, ...]) -> tuple[str, ...]:
    """Names of a rule's policies: the rule name, or ``<rule>-<window>s`` for several."""
    if len(windows) == 1:
        return (rule,)
    names = [f"{rule}-{w}s" for w in windows]
    if len(set(names)) != len(names):
        names = [f"{rule}-{i}" for i in range(len(windows))]
    return tuple(names)


@lru_cache(maxsize=4096)
def _policy_value(names: tuple[str, ...], quotas: tuple[tuple[int, int], ...]) -> bytes:
    return ", ".join(
        f'"{name}";q={q};w={w}' for name, (q, w) in zip(names, quotas, strict=True)
    ).encode("ascii")


def _seconds_left(reset_at: float, now: float) -> int:
    return max(0, math.ceil(reset_at - now))


class SingleLimitHeaders:
    """The ``draft`` headers of a one-limit rule, with the constant parts built once.

    ``RateLimit-Policy`` never changes for a rule and is kept whole; of
    ``RateLimit`` only ``r`` and ``t`` change per request. Renders exactly
    what :func:`render_headers` does for one state in the ``draft`` style.
    """

    __slots__ = ("policy", "prefix")

    def __init__(self, rule: str, quota: int, window: int) -> None:
        name = _safe(rule)
        self.policy = (b"ratelimit-policy", _policy_value((name,), ((quota, window),)))
        self.prefix = f'"{name}";r='.encode("ascii")

    def render(self, remaining: int, reset_at: float, now: float) -> list[tuple[bytes, bytes]]:
        """The two header lines for one request."""
        seconds = math.ceil(reset_at - now) if reset_at > now else 0
        return [self.policy, (b"ratelimit", b"%s%d;t=%d" % (self.prefix, remaining, seconds))]


def render_headers(
    rule: str, states: Sequence[LimitState], styles: Sequence[str], now: float
) -> list[tuple[bytes, bytes]]:
    """The header lines for one rule's states, in the configured styles."""
    if not states or not styles:
        return []
    out: list[tuple[bytes, bytes]] = []
    if len(states) == 1 and styles == ("draft",):  # the common case, kept cheap
        s = states[0]
        w = s.item.get_expiry()
        name = _safe(rule)
        return [
            (b"ratelimit-policy", _policy_value((name,), ((s.item.amount, w),))),
            (b"ratelimit", f'"{name}";r={s.remaining};t={_seconds_left(s.reset_at, now)}'.encode()),
        ]
    if "draft" in styles:
        windows = tuple(s.item.get_expiry() for s in states)
        names = policy_names(_safe(rule), windows)
        quotas = tuple((s.item.amount, w) for s, w in zip(states, windows, strict=True))
        out.append((b"ratelimit-policy", _policy_value(names, quotas)))
        out.append(
            (
                b"ratelimit",
                ", ".join(
                    f'"{name}";r={s.remaining};t={_seconds_left(s.reset_at, now)}'
                    for name, s in zip(names, states, strict=True)
                ).encode("ascii"),
            )
        )
    if "legacy" in styles or "x" in styles:
        tightest = min(states, key=lambda s: (s.remaining, -s.reset_at))
        limit = str(tightest.item.amount).encode()
        remaining = str(tightest.remaining).encode()
        if "legacy" in styles:
            out.append((b"ratelimit-limit", limit))
            out.append((b"ratelimit-remaining", remaining))
            out.append((b"ratelimit-reset", str(_seconds_left(tightest.reset_at, now)).encode()))
        if "x" in styles:
            out.append((b"x-ratelimit-limit", limit))
            out.append((b"x-ratelimit-remaining", remaining))
            out.append((b"x-ratelimit-reset", str(math.ceil(tightest.reset_at)).encode()))
    return out


def retry_after(states: Sequence[LimitState], now: float) -> int:
    """Seconds until every refusing limit has room again (at least 1)."""
    refused = [s.reset_at for s in states if not s.allowed]
    return max(1, *(_seconds_left(r, now) for r in refused)) if refused else 1


@lru_cache(maxsize=1024)
def _safe(name: str) -> str:
    # An sf-string may not hold '"' or '\\' unescaped, nor non-ASCII.
    return "".join(ch for ch in name if 32 <= ord(ch) < 127 and ch not in '"\\')
