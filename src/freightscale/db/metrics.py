"""OpenTelemetry metrics of the database layer (API only: free without an SDK).

Every instrument carries ``db.role`` (``primary`` / ``replica``) and
``db.pool.name`` (``primary``, ``replica-0``, ...)::

    freightscale.db.pool.connections.in_use    gauge      checked-out connections
    freightscale.db.pool.connections.idle      gauge      pooled, ready connections
    freightscale.db.pool.connections.overflow  gauge      connections beyond pool_size
    freightscale.db.pool.checkout.wait         histogram  seconds waited for a connection
    freightscale.db.pool.checkout.timeouts     counter    checkouts that hit pool_timeout
    freightscale.db.unavailable                counter    requests answered 503 (+ reason)
    freightscale.db.replica.lag                gauge      last measured replay lag, seconds
    freightscale.db.replica.healthy            gauge      1 in rotation, 0 out
    freightscale.db.read_your_writes.errors    counter    marker store failures
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

__all__ = [
    "Attributes",
    "observe_pool",
    "observe_replica",
    "record_checkout",
    "record_store_error",
    "record_timeout",
    "record_unavailable",
]

Attributes = dict[str, str]

_meter = metrics.get_meter("freightscale")


class _Pool(Protocol):
    def checkedout(self) -> int: ...
    def checkedin(self) -> int: ...
    def overflow(self) -> int: ...


class _Replica(Protocol):
    @property
    def healthy(self) -> bool: ...
    @property
    def lag(self) -> float | None: ...


# Observed objects are held weakly: a disposed engine disappears from the
# gauges instead of being kept alive by them.
_pools: dict[int, tuple[weakref.ref[Any], Callable[[Any], _Pool | None], Attributes]] = {}
_replicas: dict[int, tuple[weakref.ref[Any], Attributes]] = {}
_lock = threading.Lock()


def observe_pool(owner: object, get_pool: Callable[[Any], _Pool | None], attrs: Attributes) -> None:
    """Report the pool ``get_pool(owner)`` in the connection gauges while ``owner`` lives."""
    with _lock:
        _pools[id(owner)] = (weakref.ref(owner), get_pool, dict(attrs))


def observe_replica(replica: _Replica, attrs: Attributes) -> None:
    """Report ``replica``'s health and lag while it lives."""
    with _lock:
        _replicas[id(replica)] = (weakref.ref(replica), dict(attrs))


def _live_pools() -> list[tuple[_Pool, Attributes]]:
    out = []
    with _lock:
        for key, (ref, get_pool, attrs) in list(_pools.items()):
            owner = ref()
            if owner is None:
                del _pools[key]
                continue
            pool = get_pool(owner)
            if pool is not None:
                out.append((pool, attrs))
    return out


def _live_replicas() -> list[tuple[_Replica, Attributes]]:
    out = []
    with _lock:
        for key, (ref, attrs) in list(_replicas.items()):
            replica = ref()
            if replica is None:
                del _replicas[key]
            else:
                out.append((replica, attrs))
    return out


def _in_use(_options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(pool.checkedout(), attrs) for pool, attrs in _live_pools()]


def _idle(_options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(pool.checkedin(), attrs) for pool, attrs in _live_pools()]


def _overflow(_options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(max(0, pool.overflow()), attrs) for pool, attrs in _live_pools()]


def _lag(_options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(replica.lag, attrs)
        for replica, attrs in _live_replicas()
        if replica.lag is not None
    ]


def _healthy(_options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(int(replica.healthy), attrs) for replica, attrs in _live_replicas()]


_meter.create_observable_gauge(
    "freightscale.db.pool.connections.in_use",
    callbacks=[_in_use],
    unit="{connection}",
    description="Connections checked out of the pool.",
)
_meter.create_observable_gauge(
    "freightscale.db.pool.connections.idle",
    callbacks=[_idle],
    unit="{connection}",
    description="Connections idle in the pool.",
)
_meter.create_observable_gauge(
    "freightscale.db.pool.connections.overflow",
    callbacks=[_overflow],
    unit="{connection}",
    description="Connections open beyond pool_size.",
)
_meter.create_observable_gauge(
    "freightscale.db.replica.lag",
    callbacks=[_lag],
    unit="s",
    description="Replay lag of a read replica at its last health check.",
)
_meter.create_observable_gauge(
    "freightscale.db.replica.healthy",
    callbacks=[_healthy],
    unit="1",
    description="1 while a replica is in rotation, 0 while it is out.",
)
_checkout_wait = _meter.create_histogram(
    "freightscale.db.pool.checkout.wait",
    unit="s",
    description="Seconds spent waiting for a pooled connection.",
)
_timeouts = _meter.create_counter(
    "freightscale.db.pool.checkout.timeouts",
    unit="{timeout}",
    description="Checkouts that gave up after pool_timeout.",
)
_unavailable = _meter.create_counter(
    "freightscale.db.unavailable",
    unit="{request}",
    description="Requests answered 503 because the database was unavailable.",
)
_store_errors = _meter.create_counter(
    "freightscale.db.read_your_writes.errors",
    unit="{error}",
    description="Read-your-writes marker store failures (reads went to the primary).",
)


def record_checkout(seconds: float, attrs: Attributes) -> None:
    """Record the wait of one successful checkout."""
    _checkout_wait.record(seconds, attrs)


def record_timeout(attrs: Attributes) -> None:
    """Count one checkout that timed out."""
    _timeouts.add(1, attrs)


def record_unavailable(name: str, reason: str) -> None:
    """Count one request answered 503."""
    _unavailable.add(1, {"db.pool.name": name, "reason": reason})


def record_store_error() -> None:
    """Count one read-your-writes marker store failure."""
    _store_errors.add(1)
