"""Settings of JWT authentication, its caches, revocation, RBAC and tenants."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from freightscale.settings._base import Section

__all__ = ["HMAC_ALGORITHMS", "SUPPORTED_ALGORITHMS", "AuthSettings"]

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
SUPPORTED_ALGORITHMS = (
    "HS256", "HS384", "HS512",
    "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512",
    "EdDSA",
)  # fmt: skip
"""Algorithms a deployment may allow; ``none`` is never among them."""


class AuthSettings(Section):
    """JWT verification, its caches, revocation, the permission cache and tenants.

    Keys come from ``secret`` (HMAC), ``public_key`` (one PEM) and/or
    ``jwks_url``; building the middleware fails with a ConfigurationError
    naming the variable when an allowed algorithm has no key. An HMAC
    algorithm is only ever checked against ``secret`` and an asymmetric one
    only against a public key of its own type, so a public key can never be
    used as an HMAC secret.
    """

    enabled: bool = False
    """Install the authentication middleware in ``build_stack``."""

    algorithms: list[str] = Field(default_factory=lambda: ["HS256"], min_length=1)
    """Accepted JWT algorithms (HS256/384/512, RS*, PS*, ES*, EdDSA; ``none`` is never accepted)."""

    secret: SecretStr = SecretStr("")
    """HMAC secret for HS256/384/512 tokens (at least 32 bytes)."""

    public_key: str = ""
    """PEM public key for RS*/PS*/ES*/EdDSA tokens (alternative or addition to ``jwks_url``)."""

    private_key: SecretStr = SecretStr("")
    """PEM private key the token issuer signs with (apps that are their own identity provider)."""

    key_id: str = Field(default="", max_length=128)
    """``kid`` the issuer puts in token headers and its JWKS document."""

    jwks_url: str = ""
    """URL of the identity provider's JWKS document (fetched asynchronously, cached)."""

    jwks_timeout: float = Field(default=5.0, gt=0, le=60)
    """Seconds one JWKS fetch may take (connect + read)."""

    jwks_min_refresh_interval: float = Field(default=60.0, ge=0, le=86_400)
    """Fewest seconds between two JWKS fetches, so a flood of unknown ``kid`` values
    cannot hammer the provider."""

    jwks_max_age: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    """Seconds after which the JWKS is refreshed in the background (the old copy keeps serving)."""

    issuer: str | None = None
    """Required ``iss`` claim, if set."""

    audience: str | None = None
    """Required ``aud`` claim, if set."""

    leeway: float = Field(default=30.0, ge=0, le=600)
    """Seconds of clock skew tolerated on ``exp`` / ``nbf`` / ``iat``."""

    required_claims: list[str] = Field(default_factory=lambda: ["exp", "iat", "sub"])
    """Claims every token must carry."""

    max_token_bytes: int = Field(default=8192, ge=256, le=65_536)
    """Longer bearer tokens are rejected before any parsing."""

    cache_ttl: float = Field(default=300.0, ge=0, le=86_400)
    """Seconds a verified token's claims are cached (never past ``exp``); 0 disables the cache."""

    cache_max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    """Most verified tokens kept in the per-process cache."""

    negative_cache_ttl: float = Field(default=10.0, ge=0, le=3600)
    """Seconds an invalid token is remembered so repeating it costs no crypto; 0 disables."""

    negative_cache_max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    """Most invalid tokens remembered per process."""

    require_auth: bool = False
    """Answer 401 to requests without a token (except ``public_paths`` and ``exempt_paths``)."""

    public_paths: list[str] = Field(default_factory=list)
    """Path prefixes that may be reached anonymously even when ``require_auth`` is on."""

    exempt_paths: list[str] = Field(default_factory=lambda: ["/healthz", "/readyz"])
    """Path prefixes where tokens are not even looked at (health endpoints)."""

    subject_claim: str = Field(default="sub", min_length=1)
    """Claim holding the user id."""

    tenant_claim: str = Field(default="tenant", min_length=1)
    """Claim holding the tenant id."""

    roles_claim: str = Field(default="roles", min_length=1)
    """Claim holding the role list."""

    scopes_claim: str = Field(default="scope", min_length=1)
    """Claim holding OAuth scopes (a space-separated string or a list)."""

    tenant_header: str | None = None
    """Header that may name the tenant (e.g. ``X-Tenant-ID``); it must match the token's tenant."""

    tenant_host_suffix: str | None = None
    """When set (``.example.com``), the host's first label names the tenant and must match."""

    tenant_path_pattern: str | None = r"^/tenants/(?P<tenant>[^/]+)"
    """Regex with a ``tenant`` group; a path naming another tenant than the token's gets 403."""

    key_prefix: str = Field(default="fs", min_length=1, max_length=64)
    """Prefix of the Redis keys, channel and stream used for revocation and permissions."""

    revocation_fail_mode: Literal["open", "closed"] = "open"
    """When Redis is down on a cache miss: ``open`` accepts a valid token without the
    revocation check, ``closed`` answers 503."""

    revocation_sync_interval: float = Field(default=5.0, gt=0, le=300)
    """Seconds between checks of the revocation log: the bound on honouring a revocation
    whose pub/sub message was missed."""

    revocation_retention: float = Field(default=86_400.0, ge=60, le=30 * 86_400)
    """Seconds a "log out everywhere" cutoff is kept; tokens must not live longer than this."""

    redis_timeout: float = Field(default=0.5, gt=0, le=30)
    """Seconds a revocation or permission lookup waits for Redis before applying the fail mode."""

    permission_ttl: float = Field(default=60.0, gt=0, le=86_400)
    """Seconds resolved permissions are cached (in process and in Redis) per tenant version."""

    permission_loader_timeout: float = Field(default=5.0, gt=0, le=120)
    """Seconds the app's permission loader may take; a loader that fails or is
    slower makes the request a 503 problem (never a 500 or a hang)."""

    permission_max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    """Most (tenant, roles) permission sets kept per process."""

    access_token_ttl: int = Field(default=900, ge=30, le=86_400)
    """Lifetime in seconds of access tokens the issuer signs."""

    @field_validator("algorithms")
    @classmethod
    def _check_algorithms(cls, value: list[str]) -> list[str]:
        for alg in value:
            if alg.lower() == "none":
                raise ValueError("'none' is never accepted; list signing algorithms such as HS256")
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(
                    f"algorithm {alg!r} is not one of {', '.join(SUPPORTED_ALGORITHMS)}"
                )
        return value

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if raw and len(raw.encode()) < 32:
            raise ValueError(
                "the HMAC secret must be at least 32 bytes (use `openssl rand -hex 32`)"
            )
        if "-----BEGIN" in raw:
            raise ValueError("the HMAC secret looks like a PEM key; put PEM keys in public_key")
        return value

    @field_validator("tenant_path_pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"tenant_path_pattern is not a valid regex: {exc}") from exc
        if "tenant" not in compiled.groupindex:
            raise ValueError("tenant_path_pattern needs a named group (?P<tenant>...)")
        return value

    @field_validator("public_paths", "exempt_paths")
    @classmethod
    def _check_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"path prefix {path!r} must start with '/'")
        return value
