"""Counters as running totals, read by OpenTelemetry when metrics are collected.

A synchronous SDK ``Counter.add`` costs microseconds per call (attribute
hashing, a lock, the aggregation); the counts freightscale keeps on every
request would pay that on every request. Here a count is an integer addition
on a :class:`Tally`, and each :class:`Counter` is published as an observable
counter whose callback reports the totals.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from opentelemetry import metrics

from freightscale.telemetry.instruments import (
    INSTRUMENTATION_NAME,
    METRICS,
    MetricSpec,
    _spec,
    get_meter,
)

__all__ = ["Counter", "Tally", "get_counter", "publish_counters"]


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
