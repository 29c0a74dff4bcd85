"""Settings of JWT authentication and RBAC."""

from __future__ import annotations

from pydantic import Field, SecretStr

from freightscale.settings._base import Section

__all__ = ["AuthSettings"]


class AuthSettings(Section):
    """JWT verification, its caches, revocation and the permission cache."""

    enabled: bool = False
    """Install the authentication middleware in ``build_stack``."""

    algorithms: list[str] = Field(default_factory=lambda: ["HS256"])
    """Accepted JWT algorithms (``none`` is never accepted)."""

    secret: SecretStr = SecretStr("")
    """HMAC secret for HS256/384/512 tokens."""

    issuer: str | None = None
    """Required ``iss`` claim, if set."""

    audience: str | None = None
    """Required ``aud`` claim, if set."""

    leeway: float = Field(default=30.0, ge=0, le=600)
    """Seconds of clock skew tolerated on ``exp`` / ``nbf`` / ``iat``."""
