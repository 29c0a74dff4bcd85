"""Settings of the HTTP response cache."""

from __future__ import annotations

from pydantic import Field

from freightscale.settings._base import Section

__all__ = ["CacheSettings"]


class CacheSettings(Section):
    """The response cache and the query-result cache."""

    enabled: bool = False
    """Install the response-cache middleware in ``build_stack``."""

    default_ttl: float = Field(default=30.0, gt=0, le=86_400)
    """Seconds a cached response stays fresh unless its rule says otherwise."""

    max_body_bytes: int = Field(default=1_048_576, ge=1, le=64 * 1_048_576)
    """Responses larger than this are not cached."""
