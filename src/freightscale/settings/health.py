"""Settings of the health endpoints."""

from __future__ import annotations

from pydantic import Field

from freightscale.settings._base import Section

__all__ = ["HealthSettings"]


class HealthSettings(Section):
    """Liveness and readiness endpoints."""

    enabled: bool = True
    """Mount the health endpoints in ``build_stack``."""

    liveness_path: str = Field(default="/healthz", pattern=r"^/[A-Za-z0-9_./-]*$")
    """Path of the liveness endpoint (200 while the process serves)."""

    readiness_path: str = Field(default="/readyz", pattern=r"^/[A-Za-z0-9_./-]*$")
    """Path of the readiness endpoint (runs the dependency checks)."""

    check_timeout: float = Field(default=2.0, gt=0, le=60)
    """Seconds each readiness check may take before it counts as failed."""
