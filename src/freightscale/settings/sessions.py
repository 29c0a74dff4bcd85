"""Settings of server-side sessions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from freightscale.settings._base import Section

__all__ = ["SessionSettings"]


class SessionSettings(Section):
    """Server-side sessions: cookie, store and expiry."""

    enabled: bool = False
    """Install the session middleware in ``build_stack``."""

    store_url: SecretStr = SecretStr("")
    """Where sessions live: ``redis://…``, ``postgresql+asyncpg://…`` or
    ``memory://``. Empty: the shared Redis if configured, else memory."""

    secret_keys: list[SecretStr] = Field(default_factory=list)
    """Cookie signing secrets: the first signs, all verify (key rotation)."""

    cookie_name: str = Field(default="fs_session", min_length=1, max_length=64)
    """Name of the session cookie."""

    max_age: int = Field(default=14 * 24 * 3600, ge=60, le=400 * 24 * 3600)
    """Session lifetime in seconds (cookie ``Max-Age`` and store TTL)."""

    secure: bool = True
    """Send the cookie only over HTTPS."""

    http_only: bool = True
    """Hide the cookie from JavaScript."""

    same_site: Literal["lax", "strict", "none"] = "lax"
    """The cookie's ``SameSite`` attribute."""

    fail_mode: Literal["open", "closed"] = "open"
    """When the store is down: ``open`` gives an anonymous session,
    ``closed`` answers 503 for routes that use the session."""
