"""JWT verification with PyJWT: explicit algorithms, typed keys, strict claims.

:class:`TokenVerifier` checks one token and returns its claims or raises
:class:`InvalidToken` whose message is safe to show a client (it ends up in
``WWW-Authenticate: Bearer error="invalid_token", error_description=…``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt
from jwt.exceptions import (
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuedAtError,
    InvalidIssuerError,
    InvalidSignatureError,
    InvalidSubjectError,
    InvalidTokenError,
    MissingRequiredClaimError,
)

from freightscale.auth.keys import (
    JWKSKeySource,
    KeyNotFound,
    VerificationKey,
    algorithm_family,
    load_public_key,
)
from freightscale.exceptions import AuthenticationError, ConfigurationError
from freightscale.settings.auth import AuthSettings

__all__ = ["InvalidToken", "TokenVerifier"]


class InvalidToken(AuthenticationError):
    """The bearer token is malformed, badly signed, expired or otherwise unacceptable.

    Args:
        description: why, in words safe to send to the client.
        cacheable: False when the failure may be transient (the key provider is down).
    """

    def __init__(self, description: str, *, cacheable: bool = True) -> None:
        self.description = description
        self.cacheable = cacheable
        super().__init__(description)


_MESSAGES: tuple[tuple[type[Exception], str], ...] = (
    (ExpiredSignatureError, "the token has expired"),
    (ImmatureSignatureError, "the token is not valid yet"),
    (InvalidAudienceError, "the token's audience is not accepted"),
    (InvalidIssuerError, "the token's issuer is not accepted"),
    (InvalidIssuedAtError, "the token's iat claim is invalid"),
    (InvalidSignatureError, "the token's signature does not verify"),
    (InvalidSubjectError, "the token's 'sub' claim must be a string"),
)


class TokenVerifier:
    """Verify JWTs against the keys and rules of an :class:`AuthSettings`.

    Args:
        settings: the auth settings (algorithms, keys, issuer, audience, leeway…).
        jwks: a JWKS key source (built from ``settings.jwks_url`` when omitted).
    """

    def __init__(self, settings: AuthSettings, *, jwks: JWKSKeySource | None = None) -> None:
        self.settings = settings
        self.algorithms = frozenset(settings.algorithms)
        secret = settings.secret.get_secret_value().encode()
        self._secret = VerificationKey("HMAC", secret) if secret else None
        self._public: VerificationKey | None = None
        if settings.public_key:
            self._public = load_public_key(settings.public_key)
        elif settings.private_key.get_secret_value():
            from freightscale.auth.issuing import public_key_of

            self._public = public_key_of(settings.private_key.get_secret_value())
        if self._secret is None and any(a.startswith("HS") for a in self.algorithms):
            raise ConfigurationError(
                "FREIGHTSCALE_AUTH__ALGORITHMS allows HMAC but FREIGHTSCALE_AUTH__SECRET is empty"
            )
        asymmetric = any(not a.startswith("HS") for a in self.algorithms)
        if asymmetric and self._public is None and not settings.jwks_url and jwks is None:
            raise ConfigurationError(
                "FREIGHTSCALE_AUTH__ALGORITHMS allows an asymmetric algorithm but no key is set: "
                "set FREIGHTSCALE_AUTH__PUBLIC_KEY, __JWKS_URL or __PRIVATE_KEY"
            )
        if jwks is None and settings.jwks_url:
            jwks = JWKSKeySource(
                settings.jwks_url,
                timeout=settings.jwks_timeout,
                min_refresh_interval=settings.jwks_min_refresh_interval,
                max_age=settings.jwks_max_age,
            )
        self.jwks = jwks
        self._decoder = jwt.PyJWT()
        self._options: dict[str, Any] = {
            "require": list(settings.required_claims),
            "verify_aud": settings.audience is not None,
            "verify_iss": settings.issuer is not None,
        }

    async def verify(self, token: str) -> dict[str, Any]:
        """Return the verified claims of ``token``.

        Raises:
            InvalidToken: with a client-safe description of what is wrong.
        """
        if len(token) > self.settings.max_token_bytes:
            raise InvalidToken("the token is too large")
        try:
            header = jwt.get_unverified_header(token)
        except InvalidTokenError:
            raise InvalidToken("the token is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken("the token's algorithm is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("the token's kid is malformed")
        key = await self._key(kid, alg)
        try:
            claims: dict[str, Any] = self._decoder.decode(
                token,
                key.key,
                algorithms=[alg],
                options=self._options,  # type: ignore[arg-type]
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway,
            )
        except MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token lacks the {exc.claim!r} claim") from None
        except InvalidTokenError as exc:
            for kind, message in _MESSAGES:
                if isinstance(exc, kind):
                    raise InvalidToken(message) from None
            raise InvalidToken("the token is malformed") from None
        _check_types(claims, self.settings)
        return claims

    async def _key(self, kid: str | None, alg: str) -> VerificationKey:
        family = algorithm_family(alg)
        if family == "HMAC":
            # HMAC is only ever checked against the configured secret.
            if self._secret is None:
                raise InvalidToken("the token's algorithm is not accepted")
            return self._secret
        if self._public is not None and self._public.accepts(alg) and self.jwks is None:
            return self._public
        if self.jwks is not None:
            try:
                return await self.jwks.get(kid, alg)
            except KeyNotFound:
                if self._public is not None and self._public.accepts(alg):
                    return self._public
                raise InvalidToken("no signing key matches the token", cacheable=False) from None
        raise InvalidToken("no signing key matches the token")

    async def aclose(self) -> None:
        """Release the JWKS client."""
        if self.jwks is not None:
            await self.jwks.aclose()


def _check_types(claims: Mapping[str, Any], settings: AuthSettings) -> None:
    sub = claims.get(settings.subject_claim)
    if not isinstance(sub, str) or not sub:
        raise InvalidToken(f"the token's {settings.subject_claim!r} claim must be a string")
    tenant = claims.get(settings.tenant_claim)
    if tenant is not None and not isinstance(tenant, str):
        raise InvalidToken(f"the token's {settings.tenant_claim!r} claim must be a string")
    roles = claims.get(settings.roles_claim)
    if roles is not None and not (
        isinstance(roles, list) and all(isinstance(r, str) for r in roles)
    ):
        raise InvalidToken(f"the token's {settings.roles_claim!r} claim must be a list of strings")
    jti = claims.get("jti")
    if jti is not None and not isinstance(jti, str):
        raise InvalidToken("the token's 'jti' claim must be a string")
    iat = claims.get("iat")
    if iat is not None and (isinstance(iat, bool) or not isinstance(iat, int | float)):
        raise InvalidToken("the token's 'iat' claim must be a number")
