"""Request ids and OpenTelemetry: names, helpers and the outermost middleware.

``TelemetryMiddleware`` gives each request an id (reused from a well-formed
``X-Request-ID`` or generated), a server span and a duration sample.
``METRICS`` lists every metric name any component records; components get
their instruments with :func:`get_counter` / :func:`get_histogram` /
:func:`get_up_down_counter`. Only ``opentelemetry-api`` is used: with no SDK
installed, spans are skipped and histograms are no-ops; counters are running
totals (:class:`Tally`) that an SDK installed later reports.
"""

from __future__ import annotations

from freightscale.telemetry.counters import Counter, Tally, get_counter, publish_counters
from freightscale.telemetry.instruments import (
    INSTRUMENTATION_NAME,
    METRICS,
    MetricSpec,
    get_histogram,
    get_meter,
    get_tracer,
    get_up_down_counter,
)
from freightscale.telemetry.middleware import (
    RequestIdLogFilter,
    TelemetryMiddleware,
    generate_request_id,
)

RequestIdMiddleware = TelemetryMiddleware
"""Alias: the telemetry middleware is also the request-id middleware."""

__all__ = [
    "INSTRUMENTATION_NAME",
    "METRICS",
    "Counter",
    "MetricSpec",
    "RequestIdLogFilter",
    "RequestIdMiddleware",
    "Tally",
    "TelemetryMiddleware",
    "generate_request_id",
    "get_counter",
    "get_histogram",
    "get_meter",
    "get_tracer",
    "get_up_down_counter",
    "publish_counters",
]
