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

    drain_on_signal: bool = True
    """Hook SIGTERM and SIGINT at lifespan startup (main thread only): the first
    signal turns readiness to 503 and holds it for ``drain_delay`` before the
    server's own handler runs (and stops accepting). A second signal skips the
    rest of the delay. Off: the drain starts at lifespan shutdown, when uvicorn
    and Granian have already stopped accepting."""

    drain_delay: float = Field(default=0.0, ge=0, le=300)
    """Seconds readiness answers 503 (while the app still serves, answering with
    ``Connection: close``) before the server is told to stop. Set it to what the
    load balancer needs to mark the instance down: probe interval times failure
    threshold, plus a margin (e.g. 10 behind Kubernetes with ``periodSeconds: 5``,
    ``failureThreshold: 2``). 0: no delay."""

    grace_period: float = Field(default=30.0, ge=0, le=3600)
    """Seconds lifespan shutdown waits for in-flight requests to finish before the
    shared pools close (uvicorn and Granian already wait for them themselves; this
    covers servers and embeddings that do not). Keep ``drain_delay + grace_period``
    below the orchestrator's kill deadline (Kubernetes:
    ``terminationGracePeriodSeconds``, default 30)."""

    @model_validator(mode="after")
    def _distinct_paths(self) -> HealthSettings:
        if self.liveness_path == self.readiness_path:
            raise ValueError(
                f"liveness_path and readiness_path are both {self.liveness_path!r}; "
                f"give them different paths"
            )
        return self
