"""Verification keys: an HMAC secret, a PEM public key, and a cached JWKS.

Every key is tagged with its *family* (HMAC, RSA, EC, OKP) and a token's
``alg`` is only ever checked against a key of that family. That is the whole
defence against algorithm confusion: an RS256 public key can never be handed
to HS256 as a secret, because an HMAC algorithm only looks at the secret.

The JWKS source fetches asynchronously (httpx, with a timeout), keeps the
last good copy when the provider is down or answers garbage, refreshes in the
background after ``max_age`` and, on an unknown ``kid``, refetches at most once
per ``min_refresh_interval`` so a flood of random kids costs the provider one
request per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from freightscale.exceptions import ConfigurationError

__all__ = ["JWKSKeySource", "KeyNotFound", "VerificationKey", "algorithm_family", "load_public_key"]

logger = logging.getLogger("freightscale.auth")

_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


def algorithm_family(alg: str) -> str:
    """Return the key family an algorithm needs: ``HMAC``, ``RSA``, ``EC`` or ``OKP``."""
    if alg.startswith("HS"):
        return "HMAC"
    if alg.startswith(("RS", "PS")):
        return "RSA"
    if alg.startswith("ES"):
        return "EC"
    if alg == "EdDSA":
        return "OKP"
    raise ValueError(f"unsupported algorithm {alg!r}")


def _family_of(key: Any) -> str | None:
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "OKP"
    return None


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key usable for one family of algorithms.

    Attributes:
        family: ``HMAC``, ``RSA``, ``EC`` or ``OKP``.
        key: the secret bytes or a ``cryptography`` public key object.
        kid: the key id, if any.
        alg: the one algorithm the key is pinned to (JWKS ``alg``), if any.
    """

    family: str
    key: Any
    kid: str | None = None
    alg: str | None = None

    def accepts(self, alg: str) -> bool:
        """True if a token signed with ``alg`` may be checked with this key."""
        if self.alg is not None and self.alg != alg:
            return False
        if algorithm_family(alg) != self.family:
            return False
        curve = _EC_CURVES.get(alg)
        return curve is None or self.key.curve.name == curve


class KeyNotFound(Exception):
    """No key can check the token (unknown ``kid``, wrong family, provider down)."""


def load_public_key(pem: str, *, setting: str = "FREIGHTSCALE_AUTH__PUBLIC_KEY") -> VerificationKey:
    """Parse a PEM public key into a :class:`VerificationKey`.

    Raises:
        ConfigurationError: naming ``setting`` when the PEM is not a supported public key.
    """
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ConfigurationError(f"{setting} is not a PEM public key: {exc}") from exc
    family = _family_of(key)
    if family is None:
        raise ConfigurationError(f"{setting}: key type {type(key).__name__} is not supported")
    return VerificationKey(family, key)


def _parse_jwks(document: Any) -> dict[str | None, list[VerificationKey]]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys: dict[str | None, list[VerificationKey]] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":  # a shared secret in a public document: never used
            continue
        try:
            jwk = PyJWK(entry)
        except (PyJWKError, ValueError, TypeError, KeyError):
            continue
        family = _family_of(jwk.key)
        if family is None:
            continue
        alg = entry.get("alg") if isinstance(entry.get("alg"), str) else None
        kid = entry.get("kid") if isinstance(entry.get("kid"), str) else None
        keys.setdefault(kid, []).append(VerificationKey(family, jwk.key, kid, alg))
    if not keys:
        raise ValueError("the JWKS document holds no usable signing key")
    return keys


class JWKSKeySource:
    """Keys from a JWKS URL, fetched lazily and cached.

    Args:
        url: the JWKS document's URL.
        timeout: seconds one fetch may take.
        min_refresh_interval: fewest seconds between two fetches.
        max_age: seconds after which a background refresh is started.
        client: an ``httpx.AsyncClient`` to use (not closed by :meth:`aclose`).
        clock: monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        min_refresh_interval: float = 60.0,
        max_age: float = 3600.0,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.min_refresh_interval = min_refresh_interval
        self.max_age = max_age
        self._client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._owns_client = client is None
        self._clock = clock
        self._keys: dict[str | None, list[VerificationKey]] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self._failing = False
        self.fetches = 0
        """Number of fetch attempts made (for tests and metrics)."""

    def __repr__(self) -> str:
        return f"JWKSKeySource(url={self.url!r}, kids={sorted(k or '' for k in self._keys)})"

    async def get(self, kid: str | None, alg: str) -> VerificationKey:
        """Return a key that can check a token with ``kid`` and ``alg``.

        Raises:
            KeyNotFound: no such key, even after the refetch the interval allows.
        """
        now = self._clock()
        if self._fetched_at is None:
            await self._refresh(force=False)
        elif now - self._fetched_at > self.max_age:
            self._refresh_in_background()
        key = self._find(kid, alg)
        if key is None and self._may_fetch():
            await self._refresh(force=False)
            key = self._find(kid, alg)
        if key is None:
            state = "unavailable" if not self._keys else "unknown"
            raise KeyNotFound(f"no {state} signing key for kid={kid!r} alg={alg}")
        return key

    def _find(self, kid: str | None, alg: str) -> VerificationKey | None:
        if kid is not None:
            candidates = self._keys.get(kid, [])
        else:
            candidates = [k for ks in self._keys.values() for k in ks]
            candidates = [k for k in candidates if k.accepts(alg)]
            if len(candidates) != 1:  # without a kid only an unambiguous key will do
                return None
        for key in candidates:
            if key.accepts(alg):
                return key
        return None

    def _may_fetch(self) -> bool:
        return (
            self._last_attempt is None
            or self._clock() - self._last_attempt >= self.min_refresh_interval
        )

    def _refresh_in_background(self) -> None:
        if (self._background is None or self._background.done()) and self._may_fetch():
            self._background = asyncio.create_task(self._refresh(force=False))

    async def _refresh(self, *, force: bool) -> None:
        attempt = self._last_attempt
        async with self._lock:
            # Another caller fetched while we waited: use its result.
            if self._last_attempt != attempt or (not force and not self._may_fetch()):
                return
            self._last_attempt = self._clock()
            self.fetches += 1
            try:
                response = await self._client.get(self.url, headers={"Accept": "application/json"})
                response.raise_for_status()
                keys = _parse_jwks(json.loads(response.content))
            except (httpx.HTTPError, ValueError) as exc:
                if not self._failing:
                    logger.warning(
                        "JWKS fetch from %s failed (%s); serving the last good copy (%d kids)",
                        self.url,
                        exc,
                        len(self._keys),
                    )
                self._failing = True
                return
            if self._failing:
                logger.warning("JWKS fetch from %s recovered", self.url)
            self._failing = False
            self._keys = keys
            self._fetched_at = self._clock()

    async def aclose(self) -> None:
        """Stop a background refresh and close the HTTP client if we own it."""
        if self._background is not None and not self._background.done():
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
        if self._owns_client:
            await self._client.aclose()
