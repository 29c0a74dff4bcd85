"""Settings of request ids and OpenTelemetry."""

from __future__ import annotations

from pydantic import Field

from freightscale.settings._base import Section

__all__ = ["TelemetrySettings"]


class TelemetrySettings(Section):
    """Request ids, the per-request span and the request-duration metric."""

    enabled: bool = True
    """Install the telemetry (request id + span) middleware in ``build_stack``."""

    request_id_header: str = Field(
        default="X-Request-ID", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$"
    )
    """Header that carries the request id in and out."""

    trust_incoming_request_id: bool = True
    """Reuse a well-formed incoming request id (otherwise always generate one)."""

    max_request_id_length: int = Field(default=128, ge=8, le=1024)
    """Longest incoming request id accepted; longer ones are replaced by a generated id."""

    tracing: bool = True
    """Start a server span per request. Costs nothing until an OpenTelemetry SDK
    tracer provider is installed."""

    metrics: bool = True
    """Record the request-duration histogram. Costs next to nothing until an
    OpenTelemetry SDK meter provider is installed."""

    metrics_path: str = Field(default="", max_length=256, pattern=r"^(/[A-Za-z0-9_./-]*)?$")
    """Serve the OpenTelemetry metrics in the Prometheus text format at this path
    (``/metrics``); empty turns the endpoint off. Like the health paths it is
    answered before every component but telemetry. Needs the ``otel`` extra;
    ``build_stack`` installs an SDK meter provider with a Prometheus reader
    unless the application already installed one (see the observability page)."""
