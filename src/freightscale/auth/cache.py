"""The per-process verification cache: verify a token once, not per request.

A verified token's entry lives until ``min(exp, now + ttl)``; an invalid token
is remembered for a short ``negative_ttl`` so repeating it costs no crypto.
Both halves are bounded cachetools caches.

The positive half is keyed by the token's bytes themselves: a dict lookup
compares the whole key, so two tokens can never share an entry, and the
lookup costs one SipHash of the token instead of a cryptographic hash (the
warm path of every authenticated request). Only tokens that verified get
there, so its memory is bounded by ``max_entries`` tokens the issuer signed;
only keys in the bearer-token form :data:`TOKEN_FORMAT` are admitted, so a
hit needs no format check. The negative half holds attacker-chosen tokens
and is keyed by a 16-byte BLAKE2b digest instead, which keeps its memory at
a few dozen bytes per entry whatever the tokens' size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cachetools import FIFOCache
from starlette.authentication import AuthCredentials

from freightscale.context import Principal

__all__ = ["TOKEN_FORMAT", "CachedToken", "Generation", "VerificationCache", "token_key"]

TOKEN_FORMAT = re.compile(rb"[\x21-\x7e]+")
"""A bearer token as the middleware accepts it: visible ASCII only (RFC 6750's
b64token is stricter; the JWT parser judges the rest)."""


def token_key(token: str | bytes) -> bytes:
    """The cache key of ``token``: its bytes (UTF-8 for a ``str``)."""
    if isinstance(token, str):
        return token.encode("utf-8", "surrogateescape")
    return token


class Generation:
    """A number bumped whenever something a cached answer was built from changes.

    The revocation list bumps it when it hears of a revocation (or loses
    events), the permission cache when its tables change. A cached token
    stamped with the current :attr:`value` may be answered as it is; any
    other is checked again first (locally, with no I/O when it can be).
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def __repr__(self) -> str:
        return f"Generation({self.value})"

    def bump(self) -> None:
        """Mark every answer built so far as to be checked again."""
        self.value += 1


@dataclass(slots=True, eq=False)
class CachedToken:
    """What the cache keeps for one verified token.

    Attributes:
        principal: the principal built from the claims (without permissions).
        expires_at: wall-clock time the entry dies (``min(exp, cached_at + ttl)``).
        jti, iat: the claims the revocation check needs.
        permissions: the permission set the last request resolved (identity-compared).
        resolved: the principal with ``permissions`` and its Starlette credentials.
        generation: the :class:`Generation` value ``resolved`` was checked at.
        until: the cache-clock time ``resolved`` may be reused until without a
            check: the earlier of ``expires_at`` and the permissions' deadline.
            ``resolved`` is answered as it is only while ``generation`` is
            current and this time is ahead.
    """

    principal: Principal
    expires_at: float
    jti: str | None
    iat: float | None
    permissions: frozenset[str] | None = None
    resolved: tuple[Principal, AuthCredentials] | None = field(default=None)
    generation: int = -1
    until: float = float("-inf")

    def stamp(
        self, perms: frozenset[str] | None, generation: int, until: float
    ) -> tuple[Principal, AuthCredentials]:
        """Record (and return) the principal with ``perms`` as the reusable answer,
        valid at ``generation`` until ``until`` (rebuilt only when ``perms`` changed)."""
        resolved = self.resolved
        if resolved is None or self.permissions is not perms:
            principal = self.principal
            if perms:
                principal = dataclasses.replace(principal, permissions=perms)
            credentials = AuthCredentials(sorted(principal.scopes | principal.permissions))
            resolved = (principal, credentials)
        self.permissions = perms
        self.resolved = resolved
        self.generation = generation
        self.until = until
        return resolved


class _Fifo(FIFOCache[bytes, Any]):
    """A FIFO cache whose ``[key]`` answers None for a missing key, not KeyError."""

    def __missing__(self, key: bytes) -> None:
        return None


class _Entries(_Fifo):
    """A :class:`_Fifo` with ``index``, a plain dict mirroring its contents.

    Every insertion, eviction and deletion goes through ``__setitem__`` /
    ``__delitem__`` (cachetools' own subclasses rely on that too), so the warm
    path can read ``index`` with one C-level ``dict.get`` while cachetools
    keeps the bound and the eviction order.
    """

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.index: dict[bytes, Any] = {}

    def __setitem__(self, key: bytes, value: Any) -> None:
        super().__setitem__(key, value)
        self.index[key] = value

    def __delitem__(self, key: bytes) -> None:
        super().__delitem__(key)
        del self.index[key]

    def clear(self) -> None:
        super().clear()
        self.index.clear()


class VerificationCache:
    """Bounded positive and negative caches of token verification results.

    Args:
        ttl: longest a verified token is cached (0 disables the positive cache).
        max_entries: most verified tokens kept (the oldest goes first).
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
        self.clock = clock
        """The wall clock entries' ``expires_at`` is compared with."""
        # Expiry is checked on read (one clock call), so the cheapest cachetools
        # cache does: every entry dies within ttl, which makes insertion order
        # close to expiry order, and FIFO eviction drops the oldest first.
        self._positive = _Entries(max_entries)
        self._negative = _Fifo(negative_max_entries)
        self.peek: Callable[[bytes], CachedToken | None] = self._positive.index.get
        """The entry for a key *without* the expiry check (one C-level dict lookup):
        the warm path's read; a caller compares ``expires_at`` with :attr:`clock`."""

    def __len__(self) -> int:
        return len(self._positive)

    def get(self, key: bytes) -> CachedToken | None:
        """The live entry for the token whose bytes are ``key``, or None."""
        entry: CachedToken | None = self._positive[key]
        if entry is not None and entry.expires_at <= self.clock():
            self._positive.pop(key, None)
            return None
        return entry

    def put(self, key: bytes, entry: CachedToken) -> None:
        """Cache a verified token (no-op when disabled, already expired, or
        ``key`` is not in :data:`TOKEN_FORMAT`)."""
        if (
            self.ttl > 0
            and entry.expires_at > self.clock()
            and TOKEN_FORMAT.fullmatch(key) is not None
        ):
            self._positive[key] = entry

    def expiry_for(self, exp: Any) -> float:
        """``min(exp, now + ttl)`` for a token whose ``exp`` claim is ``exp``."""
        limit = self.clock() + self.ttl
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            return min(float(exp), limit)
        return limit

    def get_negative(self, key: bytes) -> str | None:
        """The remembered failure description for the token ``key``, or None."""
        if self.negative_ttl <= 0:
            return None
        digest = _digest(key)
        hit: tuple[float, str] | None = self._negative[digest]
        if hit is None:
            return None
        if hit[0] <= self.clock():
            self._negative.pop(digest, None)
            return None
        return hit[1]

    def put_negative(self, key: bytes, description: str) -> None:
        """Remember that the token ``key`` is invalid."""
        if self.negative_ttl > 0:
            self._negative[_digest(key)] = (self.clock() + self.negative_ttl, description)

    def clear(self) -> None:
        """Drop every verified token (the negative cache stays: invalid stays invalid)."""
        self._positive.clear()


def _digest(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=16).digest()
