"""The per-process verification cache: verify a token once, not per request.

Keyed by a 128-bit BLAKE2b hash of the token (the token itself is never kept
as a key). A verified token's entry lives until ``min(exp, now + ttl)``; an
invalid token is remembered for a short ``negative_ttl`` so repeating it costs
no crypto. Both halves are bounded cachetools TLRU caches.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cachetools import TLRUCache
from starlette.authentication import AuthCredentials

from freightscale.context import Principal

__all__ = ["CachedToken", "VerificationCache", "token_key"]


def token_key(token: str | bytes) -> bytes:
    """The cache key of ``token``: a 16-byte BLAKE2b digest of its UTF-8 bytes."""
    if isinstance(token, str):
        token = token.encode("utf-8", "surrogateescape")
    return hashlib.blake2b(token, digest_size=16).digest()


@dataclass(slots=True, eq=False)
class CachedToken:
    """What the cache keeps for one verified token.

    Attributes:
        principal: the principal built from the claims (without permissions).
        expires_at: wall-clock time the entry dies (``min(exp, cached_at + ttl)``).
        jti, iat: the claims the revocation check needs.
        permissions: the permission set the last request resolved (identity-compared).
        resolved: the principal with ``permissions`` and its Starlette credentials.
    """

    principal: Principal
    expires_at: float
    jti: str | None
    iat: float | None
    permissions: frozenset[str] | None = None
    resolved: tuple[Principal, AuthCredentials] | None = field(default=None)


def _ttu(_key: Any, value: Any, _now: float) -> float:
    expires: float = value[0] if isinstance(value, tuple) else value.expires_at
    return expires


class VerificationCache:
    """Bounded positive and negative caches of token verification results.

    Args:
        ttl: longest a verified token is cached (0 disables the positive cache).
        max_entries: most verified tokens kept.
        negative_ttl: how long an invalid token is remembered (0 disables).
        negative_max_entries: most invalid tokens kept.
        clock: wall clock (entries also die at the token's ``exp``).
    """

    def __init__(
        self,
        *,
        ttl: float = 300.0,
        max_entries: int = 10_000,
        negative_ttl: float = 10.0,
        negative_max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        self._positive: TLRUCache[bytes, CachedToken] = TLRUCache(max_entries, _ttu, timer=clock)
        self._negative: TLRUCache[bytes, tuple[float, str]] = TLRUCache(
            negative_max_entries, _ttu, timer=clock
        )

    def __len__(self) -> int:
        return len(self._positive)

    def get(self, key: bytes) -> CachedToken | None:
        """The live entry for ``key``, or None."""
        try:  # one lookup instead of get()'s contains-then-getitem
            return self._positive[key]
        except KeyError:
            return None

    def put(self, key: bytes, entry: CachedToken) -> None:
        """Cache a verified token (no-op when disabled or already expired)."""
        if self.ttl > 0 and entry.expires_at > self._clock():
            self._positive[key] = entry

    def expiry_for(self, exp: Any) -> float:
        """``min(exp, now + ttl)`` for a token whose ``exp`` claim is ``exp``."""
        limit = self._clock() + self.ttl
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            return min(float(exp), limit)
        return limit

    def get_negative(self, key: bytes) -> str | None:
        """The remembered failure description for ``key``, or None."""
        if self.negative_ttl <= 0:
            return None
        hit = self._negative.get(key)
        return hit[1] if hit is not None else None

    def put_negative(self, key: bytes, description: str) -> None:
        """Remember that ``key``'s token is invalid."""
        if self.negative_ttl > 0:
            self._negative[key] = (self._clock() + self.negative_ttl, description)

    def clear(self) -> None:
        """Drop every verified token (the negative cache stays: invalid stays invalid)."""
        self._positive.clear()
