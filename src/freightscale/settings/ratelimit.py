"""Settings of the rate limiter."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from freightscale.settings._base import Section

__all__ = ["RateLimitSettings"]


class RateLimitSettings(Section):
    """Rate limits, their storage and the outage policy."""

    enabled: bool = False
    """Install the rate-limit middleware in ``build_stack``."""

    default: str = "100/second"
    """The default rule's limits, in ``limits`` notation (``10/second; 1000/hour``)."""

    fail_mode: Literal["open", "closed"] = "open"
    """When Redis is down: ``open`` falls back to a per-process limiter,
    ``closed`` answers 503."""

    timeout: float = Field(default=0.05, gt=0, le=10)
    """Seconds the limiter waits for Redis before applying ``fail_mode``."""
