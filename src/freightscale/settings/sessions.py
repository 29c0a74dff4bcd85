"""Settings of server-side sessions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from freightscale.settings._base import Section, check_url_scheme

__all__ = ["SESSION_STORE_SCHEMES", "SessionSettings"]

SESSION_STORE_SCHEMES = (
    "memory",
    "redis",
    "rediss",
    "redis+sentinel",
    "redis+cluster",
    "postgresql",
    "postgresql+asyncpg",
)

_MIN_SECRET = 32


class SessionSettings(Section):
    """Server-side sessions: cookie, store, expiry, outage policy and legacy cutover."""

    enabled: bool = False
    """Install the session middleware in ``build_stack``."""

    store_url: SecretStr = SecretStr("")
    """Where sessions live: ``redis://…``, ``postgresql+asyncpg://…`` or
    ``memory://``. Empty: the shared Redis if configured, else memory."""

    secret_keys: list[SecretStr] = Field(default_factory=list)
    """Cookie signing secrets (each at least 32 characters): the first signs,
    all verify (key rotation: prepend the new key, drop the old one after ``max_age``)."""

    cookie_name: str = Field(
        default="fs_session", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$"
    )
    """Name of the session cookie."""

    max_age: int = Field(default=14 * 24 * 3600, ge=60, le=400 * 24 * 3600)
    """Session lifetime in seconds (cookie ``Max-Age`` and store TTL)."""

    refresh_interval: int = Field(default=3600, ge=0, le=400 * 24 * 3600)
    """Sliding expiry: a session read at least this many seconds after its last
    write gets its lifetime renewed (one write, at most once per interval; 0: every read)."""

    secure: bool = True
    """Send the cookie only over HTTPS."""

    http_only: bool = True
    """Hide the cookie from JavaScript."""

    same_site: Literal["lax", "strict", "none"] = "lax"
    """The cookie's ``SameSite`` attribute."""

    path: str = Field(default="/", pattern=r"^/[\x21-\x3a\x3c-\x7e]*$")
    """The cookie's ``Path`` attribute."""

    domain: str | None = Field(default=None, pattern=r"^\.?[A-Za-z0-9.-]+$", max_length=253)
    """The cookie's ``Domain`` attribute (None: host-only cookie)."""

    max_size_bytes: int = Field(default=16_384, ge=256, le=1_048_576)
    """Largest serialized session; a handler that grows it beyond gets
    :class:`~freightscale.sessions.SessionTooLargeError`."""

    eager: bool = False
    """Load the session before calling the app for every request that carries a
    session cookie, so plain ``request.session`` works without ``await load_session``
    (costs one store read per such request, used or not)."""

    eager_paths: list[str] = Field(default_factory=list)
    """Path prefixes whose requests load the session eagerly (``["/account"]``);
    other routes stay lazy."""

    fail_mode: Literal["open", "closed"] = "open"
    """When the store is down: ``open`` gives an anonymous session,
    ``closed`` answers 503 for routes that use the session."""

    timeout: float = Field(default=2.0, gt=0, le=60)
    """PostgreSQL store: seconds one call may take before the store counts as down
    (a Redis store uses the Redis settings' ``socket_timeout`` and ``pool_timeout``)."""

    conflict_retries: int = Field(default=3, ge=0, le=20)
    """Times a conflicting write (another request saved the session first) is
    merged key by key and retried before the request fails."""

    cleanup_interval: float = Field(default=300.0, ge=1, le=86_400)
    """PostgreSQL: seconds between runs of the expired-session cleanup task."""

    cleanup_batch_size: int = Field(default=500, ge=1, le=100_000)
    """PostgreSQL: rows deleted per cleanup statement (small batches, short locks)."""

    table_name: str = Field(default="freightscale_sessions", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """PostgreSQL: the sessions table (created on first use if missing)."""

    legacy_secret: SecretStr = SecretStr("")
    """Secret of the legacy express-session cookie; set it to let ``connect.sid``
    holders keep their imported sessions (zero-logout cutover). Empty: off."""

    legacy_cookie_name: str = Field(default="connect.sid", min_length=1, max_length=64)
    """Name of the legacy session cookie."""

    @field_validator("store_url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        check_url_scheme(value.get_secret_value(), SESSION_STORE_SCHEMES)
        return value

    @field_validator("secret_keys")
    @classmethod
    def _check_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for index, key in enumerate(value):
            if len(key.get_secret_value()) < _MIN_SECRET:
                raise ValueError(
                    f"secret key #{index} is {len(key.get_secret_value())} characters; "
                    f"use at least {_MIN_SECRET} random characters "
                    "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
        return value

    @field_validator("eager_paths")
    @classmethod
    def _check_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"eager path {path!r} must start with '/'")
        return value

    @model_validator(mode="after")
    def _check_same_site(self) -> SessionSettings:
        if self.same_site == "none" and not self.secure:
            raise ValueError("same_site='none' requires secure=True (browsers reject it otherwise)")
        return self
