"""Settings of the health endpoints."""

from __future__ import annotations

from pydantic import Field, model_validator

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

    cache_ttl: float = Field(default=1.0, ge=0, le=60)
    """Seconds a readiness result is reused, so a flood of probes does not become a
    flood of Redis PINGs and ``SELECT 1``s (0: run the checks on every probe)."""

    show_output: bool = True
    """Include each failed check's error message in the readiness body. Turn off
    when the health endpoints are reachable from outside and the messages
    (host names, ports) should stay private."""

    @model_validator(mode="after")
    def _distinct_paths(self) -> HealthSettings:
        if self.liveness_path == self.readiness_path:
            raise ValueError(
                f"liveness_path and readiness_path are both {self.liveness_path!r}; "
                f"give them different paths"
            )
        return self
