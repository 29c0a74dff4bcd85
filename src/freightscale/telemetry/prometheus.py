"""A Prometheus scrape endpoint for the OpenTelemetry metrics freightscale records.

Components record through ``opentelemetry-api`` only (see
:mod:`freightscale.telemetry.instruments`). To scrape them, an SDK
``MeterProvider`` needs a :class:`~opentelemetry.exporter.prometheus.PrometheusMetricReader`,
and something has to serve that reader's ``prometheus_client`` registry over
HTTP. This module does both:

* :func:`install_prometheus` sets a global SDK ``MeterProvider`` with a
  Prometheus reader when the application has not installed one itself;
* :class:`MetricsApp` is a pure ASGI app that answers ``GET`` with the
  registry in the Prometheus text format (or OpenMetrics, when the scraper
  asks for it). ``build_stack`` mounts it at ``settings.telemetry.metrics_path``.

Both need the ``otel`` extra (``opentelemetry-sdk``,
``opentelemetry-exporter-prometheus``, ``prometheus-client``); they import it
lazily and raise :class:`~freightscale.exceptions.MissingDependencyError`
without it.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from freightscale.errors import problem_response
from freightscale.exceptions import MissingDependencyError
from freightscale.telemetry.counters import publish_counters
from freightscale.types import Receive, Scope, Send

if TYPE_CHECKING:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.view import View
    from prometheus_client import CollectorRegistry

__all__ = [
    "SECONDS_BUCKETS",
    "MetricsApp",
    "install_prometheus",
    "metric_views",
    "prometheus_reader",
]

SECONDS_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
"""Bucket bounds of freightscale's duration histograms (unit ``s``).

The SDK's default bounds (0, 5, 10, 25 ... 10000) suit milliseconds: in
seconds they would put every request in the first bucket."""

logger = logging.getLogger("freightscale.telemetry")

_install_lock = threading.Lock()


def _default_registry(feature: str) -> CollectorRegistry:
    try:
        from prometheus_client import REGISTRY
    except ImportError as exc:
        raise MissingDependencyError("prometheus-client", extra="otel", feature=feature) from exc
    return REGISTRY


def prometheus_reader(registry: CollectorRegistry | None = None) -> PrometheusMetricReader:
    """Return a Prometheus metric reader that exposes its metrics in ``registry``.

    Use it when the application builds its own SDK ``MeterProvider``: add the
    reader to the provider's ``metric_readers`` and serve the same registry
    with :class:`MetricsApp`.

    Args:
        registry: the ``prometheus_client`` registry to expose the metrics in;
            the process-wide ``prometheus_client.REGISTRY`` when omitted.

    Raises:
        MissingDependencyError: the ``otel`` extra is not installed.
    """
    feature = "the Prometheus metrics reader"
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
    except ImportError as exc:
        raise MissingDependencyError(
            "opentelemetry-exporter-prometheus", extra="otel", feature=feature
        ) from exc
    if registry is None:
        registry = _default_registry(feature)
    return PrometheusMetricReader(registry=registry)


def metric_views() -> list[View]:
    """Return the SDK views freightscale's histograms need (second-scale buckets).

    Pass them to your own ``MeterProvider(views=...)`` when you build it
    yourself; :func:`install_prometheus` uses them for the provider it builds.

    Raises:
        MissingDependencyError: the ``otel`` extra is not installed.
    """
    try:
        from opentelemetry.sdk.metrics import Histogram
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
    except ImportError as exc:
        raise MissingDependencyError(
            "opentelemetry-sdk", extra="otel", feature="the freightscale metric views"
        ) from exc
    return [
        View(
            instrument_type=Histogram,
            instrument_name="freightscale.*",
            instrument_unit="s",
            aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS),
        )
    ]


def install_prometheus(
    meter_provider: MeterProvider | None = None,
    *,
    registry: CollectorRegistry | None = None,
) -> MeterProvider:
    """Make the freightscale metrics scrapeable: install an SDK provider if the app has none.

    OpenTelemetry lets a process set its global ``MeterProvider`` once, and an
    SDK provider's readers are fixed when it is built. So:

    * ``meter_provider`` given: it is the application's own provider; it is
      returned as it is and nothing is installed (freightscale's counters are
      published to it with :func:`~freightscale.telemetry.publish_counters`
      when it is not the global provider). It must already carry a reader from
      :func:`prometheus_reader` for the same ``registry`` that
      :class:`MetricsApp` serves.
    * no ``meter_provider``, and the global provider is already an SDK
      provider (the application, or an auto-instrumentation agent, set one
      up): that provider is returned unchanged, with a warning when it has
      no Prometheus reader — the endpoint would then stay empty.
    * otherwise: a new SDK ``MeterProvider`` with a Prometheus reader on
      ``registry`` and :func:`metric_views` is set as the global provider
      and returned. freightscale's instruments, created on the API's proxy
      meter, record into it from then on, even those created before the call.

    Call it once at process start-up (``build_stack`` calls it when
    ``metrics_path`` is set); repeated calls return the same provider.

    Args:
        meter_provider: the application's own SDK provider, if it has one.
        registry: the ``prometheus_client`` registry for the new reader;
            ``prometheus_client.REGISTRY`` when omitted.

    Returns:
        The SDK provider the freightscale instruments record into.

    Raises:
        MissingDependencyError: the ``otel`` extra is not installed.
    """
    if meter_provider is not None:
        from opentelemetry import metrics

        if meter_provider is not metrics.get_meter_provider():
            # Not the global one: freightscale's counters must be published to it.
            publish_counters(meter_provider)
        return meter_provider
    feature = "the Prometheus metrics endpoint"
    try:
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    except ImportError as exc:
        raise MissingDependencyError("opentelemetry-sdk", extra="otel", feature=feature) from exc
    with _install_lock:
        current = metrics.get_meter_provider()
        if isinstance(current, SdkMeterProvider):
            if not _has_prometheus_reader(current):
                logger.warning(
                    "an OpenTelemetry MeterProvider is already installed without a Prometheus "
                    "reader, so the metrics endpoint will be empty; add "
                    "freightscale.telemetry.prometheus.prometheus_reader() to its metric_readers"
                )
            return current
        provider = SdkMeterProvider(
            metric_readers=[prometheus_reader(registry)], views=metric_views()
        )
        metrics.set_meter_provider(provider)
        return provider


def _has_prometheus_reader(provider: Any) -> bool:
    """Best effort: whether ``provider`` has a Prometheus reader (True when unknowable)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    config = getattr(provider, "_sdk_config", None)
    readers = getattr(config, "metric_readers", None)
    if readers is None:
        return True
    return any(isinstance(reader, PrometheusMetricReader) for reader in readers)


class MetricsApp:
    """Pure ASGI app serving a ``prometheus_client`` registry to ``GET`` / ``HEAD``.

    The registry is rendered in a worker thread: collecting runs the
    OpenTelemetry observable-gauge callbacks and, on the default registry,
    the process collector reads ``/proc``, neither of which belongs on the
    event loop. The format follows the scraper's ``Accept`` header (Prometheus
    text 0.0.4, or OpenMetrics when asked for). Other methods get a 405
    problem response.

    Args:
        registry: the registry to serve; ``prometheus_client.REGISTRY`` (where
            :func:`install_prometheus` puts the freightscale metrics by
            default) when omitted.

    Raises:
        MissingDependencyError: the ``otel`` extra is not installed.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        feature = "the Prometheus metrics endpoint"
        try:
            from prometheus_client.exposition import choose_encoder
        except ImportError as exc:
            raise MissingDependencyError(
                "prometheus-client", extra="otel", feature=feature
            ) from exc
        self.registry = registry if registry is not None else _default_registry(feature)
        self._choose_encoder = choose_encoder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        method: str = scope["method"]
        if method not in ("GET", "HEAD"):
            response = problem_response(
                405,
                detail=f"{method} is not allowed on the metrics endpoint; use GET",
                headers={"Allow": "GET, HEAD"},
            )
            await response(scope, receive, send)
            return
        accept = ""
        for name, value in scope.get("headers", ()):
            if name == b"accept":
                accept = value.decode("latin-1")
                break
        encoder, content_type = self._choose_encoder(accept)
        body: bytes = await anyio.to_thread.run_sync(encoder, self.registry)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode("ascii")),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge lifespan events when served on its own."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
