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

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from opentelemetry import metrics, trace

__all__ = [
    "INSTRUMENTATION_NAME",
    "METRICS",
    "Counter",
    "MetricSpec",
    "Tally",
    "get_counter",
    "get_histogram",
    "get_meter",
    "get_tracer",
    "get_up_down_counter",
    "publish_counters",
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


class Tally:
    """One series of a :class:`Counter`: a running total for one fixed label set.

    ``tally.value += 1`` (or :meth:`add`) is the whole cost of counting on a hot
    path; OpenTelemetry reads :attr:`value` when it collects metrics.
    """

    __slots__ = ("attributes", "value")

    def __init__(self, attributes: Mapping[str, str]) -> None:
        self.attributes = attributes
        self.value: int = 0

    def __repr__(self) -> str:
        return f"Tally({dict(self.attributes)!r}, value={self.value})"

    def add(self, amount: int = 1) -> None:
        """Add ``amount`` (>= 0) to the total."""
        self.value += amount


class Counter:
    """A monotonic counter whose series are plain running totals.

    Recording costs an integer addition: the counter is published to
    OpenTelemetry as an *observable* counter, whose callback reports every
    series' total when a reader collects (a Prometheus scrape, a periodic
    export). A synchronous SDK ``Counter.add`` costs microseconds per call
    (attribute hashing, locking, aggregation); the counts freightscale keeps on
    every request would pay that on every request.

    Hot paths take a :class:`Tally` once with :meth:`series` and do
    ``tally.value += 1``; other code calls :meth:`add` with the labels.
    Totals are per process and since process start (cumulative), which is what
    an OpenTelemetry counter reports anyway. An increment is a plain integer
    addition: exact when made on one thread (the event loop, where
    freightscale counts); code counting from several threads must serialise
    its increments itself.
    """

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self._series: dict[frozenset[tuple[str, str]], Tally] = {}
        self._observed: list[int] = []

    def __repr__(self) -> str:
        return f"Counter({self.spec.name!r}, series={len(self._series)})"

    def series(self, attributes: Mapping[str, str] | None = None) -> Tally:
        """The running total for ``attributes`` (created at zero on first use)."""
        attrs = dict(attributes or {})
        key = frozenset(attrs.items())
        tally = self._series.get(key)
        if tally is None:
            tally = self._series.setdefault(key, Tally(MappingProxyType(attrs)))
        return tally

    def add(self, amount: int, attributes: Mapping[str, str] | None = None) -> None:
        """Add ``amount`` (>= 0) to the series of ``attributes``."""
        self.series(attributes).value += amount

    def values(self) -> dict[frozenset[tuple[str, str]], int]:
        """Every series' total now, keyed by its label items."""
        return {key: tally.value for key, tally in list(self._series.items())}

    def observe(self, options: metrics.CallbackOptions | None = None) -> list[metrics.Observation]:
        """The observable counter's callback: one observation per series."""
        return [
            metrics.Observation(tally.value, dict(tally.attributes))
            for tally in list(self._series.values())
        ]

    def publish(self, meter: metrics.Meter) -> None:
        """Report this counter through ``meter`` too (once per meter)."""
        if id(meter) in self._observed:
            return
        self._observed.append(id(meter))
        meter.create_observable_counter(
            self.spec.name,
            callbacks=[self.observe],
            unit=self.spec.unit,
            description=self.spec.description,
        )


_counters: dict[str, Counter] = {}


def get_counter(name: str) -> Counter:
    """Return the counter ``name`` (created once, then cached).

    It reports through the global meter provider (the API's proxy until an
    application installs an SDK); :func:`publish_counters` adds another.

    Raises:
        KeyError: when ``name`` is not in :data:`METRICS`.
        TypeError: when ``name`` is not a counter.
    """
    counter = _counters.get(name)
    if counter is None:
        counter = Counter(_spec(name, "counter"))
        counter.publish(get_meter())
        counter = _counters.setdefault(name, counter)
    return counter


def publish_counters(meter_provider: metrics.MeterProvider) -> None:
    """Report every freightscale counter through ``meter_provider`` as well.

    The counters report through the global provider by default; call this
    when the application keeps its own SDK ``MeterProvider`` instead of
    installing a global one.
    """
    meter = metrics.get_meter(INSTRUMENTATION_NAME, meter_provider=meter_provider)
    for spec in METRICS.values():
        if spec.kind == "counter":
            get_counter(spec.name).publish(meter)


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
