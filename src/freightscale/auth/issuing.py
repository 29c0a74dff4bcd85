"""Issue access tokens, for apps that are their own identity provider.

:class:`TokenIssuer` signs short-lived access tokens (a ``jti``, the tenant,
the roles) with the configured key and publishes the public half as a JWKS
document, which other services point ``jwks_url`` at.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from freightscale.auth.keys import VerificationKey, algorithm_family
from freightscale.exceptions import ConfigurationError
from freightscale.settings.auth import AuthSettings

__all__ = ["TokenIssuer", "public_key_of"]


def _load_private(pem: str) -> Any:
    try:
        return load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"FREIGHTSCALE_AUTH__PRIVATE_KEY is not an unencrypted PEM private key: {exc}"
        ) from exc


def public_key_of(private_pem: str) -> VerificationKey:
    """Return the verification key matching a PEM private key."""
    return _public_of(_load_private(private_pem))


def _public_of(key: Any) -> VerificationKey:
    public = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        return VerificationKey("RSA", public)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return VerificationKey("EC", public)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return VerificationKey("OKP", public)
    raise ConfigurationError(f"private key type {type(key).__name__} is not supported")


class TokenIssuer:
    """Sign access tokens with the settings' key.

    The first entry of ``settings.algorithms`` is the signing algorithm: an
    HMAC one signs with ``secret``, any other with ``private_key``.

    Args:
        settings: auth settings (algorithms, keys, issuer, audience, claim names,
            ``access_token_ttl``, ``key_id``).
        clock: wall clock in seconds, injectable for tests.
    """

    def __init__(self, settings: AuthSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.algorithm = settings.algorithms[0]
        self._clock = clock
        family = algorithm_family(self.algorithm)
        self._public: VerificationKey | None = None
        if family == "HMAC":
            secret = settings.secret.get_secret_value()
            if not secret:
                raise ConfigurationError(
                    f"FREIGHTSCALE_AUTH__SECRET is empty; {self.algorithm} needs it to sign tokens"
                )
            self._key: Any = secret.encode()
        else:
            pem = settings.private_key.get_secret_value()
            if not pem:
                raise ConfigurationError(
                    f"FREIGHTSCALE_AUTH__PRIVATE_KEY is empty; {self.algorithm} needs it to sign"
                )
            self._key = _load_private(pem)
            self._public = _public_of(self._key)
            if not self._public_accepts():
                raise ConfigurationError(
                    f"FREIGHTSCALE_AUTH__PRIVATE_KEY is a {self._public.family} key, which "
                    f"cannot sign {self.algorithm}"
                )

    def _public_accepts(self) -> bool:
        return self._public is not None and self._public.accepts(self.algorithm)

    def issue(
        self,
        subject: str,
        *,
        tenant: str | None = None,
        roles: Iterable[str] = (),
        scopes: Iterable[str] = (),
        ttl: float | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """Return a signed access token.

        Args:
            subject: the user id (``sub``).
            tenant: the tenant id, if any.
            roles: role names.
            scopes: OAuth scopes (space-joined into ``scope``).
            ttl: lifetime in seconds (default ``access_token_ttl``).
            claims: extra claims (they may not override the ones above).
        """
        s = self.settings
        now = self._clock()
        # Sub-second iat so a token issued right after "log out everywhere" is not revoked.
        payload: dict[str, Any] = dict(claims or {})
        payload.update(
            {
                s.subject_claim: subject,
                "iat": math.floor(now * 1000) / 1000,
                "nbf": int(now),
                "exp": int(now + (ttl if ttl is not None else s.access_token_ttl)),
                "jti": uuid.uuid4().hex,
            }
        )
        if tenant is not None:
            payload[s.tenant_claim] = tenant
        roles = sorted(roles)
        if roles:
            payload[s.roles_claim] = roles
        scope_list = sorted(scopes)
        if scope_list:
            payload[s.scopes_claim] = " ".join(scope_list)
        if s.issuer is not None:
            payload["iss"] = s.issuer
        if s.audience is not None:
            payload["aud"] = s.audience
        headers = {"kid": s.key_id} if s.key_id else None
        return jwt.encode(payload, self._key, algorithm=self.algorithm, headers=headers)

    def jwks(self) -> dict[str, Any]:
        """Return the public JWKS document (empty for HMAC: a secret is never published)."""
        if self._public is None:
            return {"keys": []}
        converter: Any = {"RSA": RSAAlgorithm, "EC": ECAlgorithm, "OKP": OKPAlgorithm}[
            self._public.family
        ]
        jwk: dict[str, Any] = json.loads(converter.to_jwk(self._public.key))
        jwk.update({"use": "sig", "alg": self.algorithm})
        if self.settings.key_id:
            jwk["kid"] = self.settings.key_id
        return {"keys": [jwk]}
