"""Every metric freightscale records, listed once, and cheap getters for them.

Components never invent metric names inline: they ask for an instrument by a
name listed in :data:`METRICS` (``get_counter("freightscale.ratelimit.decisions")``),
so the names, units and label sets are reviewed in one place and documented
on the telemetry page. A new component adds its :class:`MetricSpec` entries
here.

Everything goes through ``opentelemetry-api`` only. Without an SDK the meter
and tracer are the API's proxies: recording on them is a no-op, and the
instruments start recording by themselves once an application installs an
SDK provider (even after they were created).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry import metrics, trace

__all__ = [
    "INSTRUMENTATION_NAME",
    "METRICS",
    "MetricSpec",
    "get_histogram",
    "get_meter",
    "get_tracer",
    "get_up_down_counter",
]

INSTRUMENTATION_NAME = "freightscale"
"""The instrumentation scope of every freightscale span and metric."""

MetricKind = Literal["counter", "up_down_counter", "histogram"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its name, instrument kind, unit, meaning and label keys.

    Attributes:
        name: dotted OpenTelemetry metric name, always under ``freightscale.``.
        kind: the instrument type.
        unit: UCUM unit (``s``, ``By``, ``{request}``).
        description: what one increment / one sample means.
        labels: the attribute keys recorded with it (a small, bounded set of values each).
    """

    name: str
    kind: MetricKind
    unit: str
    description: str
    labels: tuple[str, ...] = ()


_SPECS: tuple[MetricSpec, ...] = (
    # telemetry (the outermost middleware)
    MetricSpec(
        "freightscale.http.request.duration",
        "histogram",
        "s",
        "Time from receiving a request to sending the end of its response.",
        ("http.request.method", "http.response.status_code"),
    ),
    # errors
    MetricSpec(
        "freightscale.errors.unhandled",
        "counter",
        "{error}",
        "Unhandled exceptions turned into a 500 problem response.",
        ("error.type",),
    ),
    # backends and stores: the failure policy (one count per outage, not per request)
    MetricSpec(
        "freightscale.backend.outages",
        "counter",
        "{outage}",
        "Times a component saw its backend (Redis, PostgreSQL) go down.",
        ("service", "component"),
    ),
    MetricSpec(
        "freightscale.backend.fallbacks",
        "counter",
        "{request}",
        "Requests served by a component's failure policy (fail open / closed) during an outage.",
        ("component", "policy"),
    ),
    MetricSpec(
        "freightscale.store.errors",
        "counter",
        "{error}",
        "Store operations that raised StoreError.",
        ("store", "operation"),
    ),
    MetricSpec(
        "freightscale.store.expired_swept",
        "counter",
        "{row}",
        "Expired rows deleted by the PostgreSQL store's sweeper.",
        ("store",),
    ),
    # health
    MetricSpec(
        "freightscale.health.check.duration",
        "histogram",
        "s",
        "Duration of one readiness check.",
        ("check", "status"),
    ),
    # database layer
    MetricSpec(
        "freightscale.db.pool.checkout.duration",
        "histogram",
        "s",
        "Time a request waited for a pooled database connection.",
        ("pool",),
    ),
    MetricSpec(
        "freightscale.db.pool.timeouts",
        "counter",
        "{timeout}",
        "Checkouts that gave up after pool_timeout (answered 503).",
        ("pool",),
    ),
    MetricSpec(
        "freightscale.db.pool.connections",
        "up_down_counter",
        "{connection}",
        "Open database connections, by pool and state.",
        ("pool", "state"),
    ),
    MetricSpec(
        "freightscale.db.routing",
        "counter",
        "{session}",
        "Database sessions routed to the primary or a replica.",
        ("target",),
    ),
    # sessions
    MetricSpec(
        "freightscale.sessions.loads",
        "counter",
        "{session}",
        "Session loads, by result (hit, miss, invalid, error).",
        ("result",),
    ),
    MetricSpec(
        "freightscale.sessions.saves",
        "counter",
        "{session}",
        "Session writes, by result (saved, deleted, error).",
        ("result",),
    ),
    # auth
    MetricSpec(
        "freightscale.auth.token_cache",
        "counter",
        "{lookup}",
        "JWT verification cache lookups, by result (hit, miss).",
        ("result",),
    ),
    MetricSpec(
        "freightscale.auth.failures",
        "counter",
        "{request}",
        "Requests rejected by authentication, by reason (missing, invalid, expired, revoked).",
        ("reason",),
    ),
    MetricSpec(
        "freightscale.auth.permission_cache",
        "counter",
        "{lookup}",
        "RBAC permission cache lookups, by result (hit, miss).",
        ("result",),
    ),
    # rate limiting
    MetricSpec(
        "freightscale.ratelimit.decisions",
        "counter",
        "{request}",
        "Rate-limit decisions, by rule and outcome (allowed, limited).",
        ("rule", "outcome"),
    ),
    # response cache
    MetricSpec(
        "freightscale.cache.lookups",
        "counter",
        "{request}",
        "Response cache lookups, by result (hit, miss, stale, bypass).",
        ("result",),
    ),
    # compression
    MetricSpec(
        "freightscale.compression.responses",
        "counter",
        "{response}",
        "Responses by content encoding chosen (br, gzip, identity).",
        ("encoding",),
    ),
    MetricSpec(
        "freightscale.compression.bytes",
        "counter",
        "By",
        "Body bytes before (in) and after (out) compression.",
        ("encoding", "direction"),
    ),
    # loop monitor
    MetricSpec(
        "freightscale.loop.lag",
        "histogram",
        "s",
        "How late the event loop ran the lag probe's timer.",
    ),
)

METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}
"""Every metric freightscale records, by name."""

_instruments: dict[tuple[str, str], object] = {}


def get_meter() -> metrics.Meter:
    """Return the ``freightscale`` meter (the API's proxy until an SDK is installed)."""
    return metrics.get_meter(INSTRUMENTATION_NAME)


def get_tracer() -> trace.Tracer:
    """Return the ``freightscale`` tracer (the API's proxy until an SDK is installed)."""
    return trace.get_tracer(INSTRUMENTATION_NAME)


def _spec(name: str, kind: MetricKind) -> MetricSpec:
    spec = METRICS.get(name)
    if spec is None:
        raise KeyError(
            f"metric {name!r} is not listed in freightscale.telemetry.METRICS; "
            f"add a MetricSpec for it in freightscale/telemetry/instruments.py"
        )
    if spec.kind != kind:
        raise TypeError(f"metric {name!r} is a {spec.kind}, not a {kind}")
    return spec


def _instrument(kind: MetricKind, name: str) -> Any:
    # Created once per (kind, name) from its MetricSpec, then cached.
    instrument = _instruments.get((kind, name))
    if instrument is None:
        spec = _spec(name, kind)
        create = getattr(get_meter(), f"create_{kind}")
        instrument = create(spec.name, spec.unit, spec.description)
        _instruments[(kind, name)] = instrument
    return instrument


def get_up_down_counter(name: str) -> metrics.UpDownCounter:
    """Return the up-down counter ``name`` (created once, then cached).

    Raises:
        KeyError: when ``name`` is not in :data:`METRICS`.
        TypeError: when ``name`` is not an up-down counter.
    """
    instrument = _instrument("up_down_counter", name)
    assert isinstance(instrument, metrics.UpDownCounter)
    return instrument


def get_histogram(name: str) -> metrics.Histogram:
    """Return the histogram ``name`` (created once, then cached).

    Raises:
        KeyError: when ``name`` is not in :data:`METRICS`.
        TypeError: when ``name`` is not a histogram.
    """
    instrument = _instrument("histogram", name)
    assert isinstance(instrument, metrics.Histogram)
    return instrument
