"""freightscale's settings: one object, one section per component.

``FreightScaleSettings()`` reads ``FREIGHTSCALE_*`` environment variables,
with ``__`` between a section and its field (``FREIGHTSCALE_REDIS__URL``).
Every section is also a plain model a component accepts on its own::

    RateLimitMiddleware(app, RateLimitSettings(default="10/second"))

An invalid value raises :class:`~freightscale.exceptions.ConfigurationError`
whose message names the environment variable, the bad value and the rule.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from freightscale.exceptions import ConfigurationError
from freightscale.settings.auth import AuthSettings
from freightscale.settings.cache import CacheSettings
from freightscale.settings.compression import CompressionSettings
from freightscale.settings.database import DatabaseSettings
from freightscale.settings.decompression import DecompressionSettings
from freightscale.settings.health import HealthSettings
from freightscale.settings.ratelimit import RateLimitSettings
from freightscale.settings.redis import RedisSettings
from freightscale.settings.sessions import SessionSettings
from freightscale.settings.telemetry import TelemetrySettings

__all__ = [
    "ENV_PREFIX",
    "AuthSettings",
    "CacheSettings",
    "CompressionSettings",
    "DatabaseSettings",
    "DecompressionSettings",
    "FreightScaleSettings",
    "HealthSettings",
    "RateLimitSettings",
    "RedisSettings",
    "SessionSettings",
    "TelemetrySettings",
    "env_name",
]

ENV_PREFIX = "FREIGHTSCALE_"
_NESTED = "__"
# Variables under the prefix that belong to the test suite, not to the settings.
_RESERVED_ENV_PREFIXES = (ENV_PREFIX + "TEST_",)


def env_name(*loc: str | int) -> str:
    """Return the environment variable that sets the field at ``loc``.

    >>> env_name("redis", "url")
    'FREIGHTSCALE_REDIS__URL'
    """
    parts = [str(p).upper() for p in loc if isinstance(p, str)]
    return ENV_PREFIX + _NESTED.join(parts)


class FreightScaleSettings(BaseSettings):
    """Every freightscale setting, read from ``FREIGHTSCALE_*`` variables.

    Keyword arguments override the environment, which is how tests and
    code-configured apps use it.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=_NESTED,
        case_sensitive=False,
        extra="forbid",
        frozen=True,
        validate_default=True,
        use_attribute_docstrings=True,
    )

    environment: Literal["development", "production", "test"] = "production"
    """Deployment environment; ``development`` relaxes cookie security for plain HTTP."""

    debug: bool = False
    """Show exception details in 500 problem responses. Never in production."""

    strict: bool = False
    """Reject unknown ``FREIGHTSCALE_*`` environment variables (catches typos)."""

    redis: RedisSettings = Field(default_factory=RedisSettings)
    """Shared Redis client."""

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    """Database engines and pools."""

    sessions: SessionSettings = Field(default_factory=SessionSettings)
    """Server-side sessions."""

    auth: AuthSettings = Field(default_factory=AuthSettings)
    """JWT authentication and RBAC."""

    ratelimit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    """Rate limiting."""

    cache: CacheSettings = Field(default_factory=CacheSettings)
    """Response cache."""

    compression: CompressionSettings = Field(default_factory=CompressionSettings)
    """Response compression."""

    decompression: DecompressionSettings = Field(default_factory=DecompressionSettings)
    """Request-body decompression."""

    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    """Request ids and OpenTelemetry."""

    health: HealthSettings = Field(default_factory=HealthSettings)
    """Health endpoints."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from exc
        if self.strict:
            _reject_unknown_env(type(self))

    @classmethod
    def env_names(cls) -> set[str]:
        """Return every environment variable name these settings read."""
        names: set[str] = set()
        for name, info in cls.model_fields.items():
            section = info.annotation
            sub = getattr(section, "model_fields", None)
            if isinstance(section, type) and sub is not None:
                names.update(env_name(name, field) for field in sub)
            names.add(env_name(name))
        return names


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        shown = error.get("input")
        if error["type"] not in ("value_error", "missing", "extra_forbidden") and not isinstance(
            shown, dict | list
        ):
            message += f" (got {shown!r})"
        lines.append(f"{env_name(*error['loc'])}: {message}")
    return "invalid freightscale settings:\n  " + "\n  ".join(lines)


def _reject_unknown_env(cls: type[FreightScaleSettings]) -> None:
    known = cls.env_names()
    unknown = sorted(
        key
        for key in os.environ
        if key.upper().startswith(ENV_PREFIX)
        and not key.upper().startswith(_RESERVED_ENV_PREFIXES)
        and key.upper() not in known
    )
    if unknown:
        raise ConfigurationError(
            f"unknown environment variable(s) {', '.join(unknown)} under {ENV_PREFIX!r} "
            f"(FREIGHTSCALE_STRICT is on); check the spelling against the settings reference "
            f"or unset them"
        )
