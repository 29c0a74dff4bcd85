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
from typing import Any, ClassVar, Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

__all__ = ["Attributes", "DbMetrics"]

Attributes = dict[str, str]


class _Pool(Protocol):
    def checkedout(self) -> int: ...
    def checkedin(self) -> int: ...
    def overflow(self) -> int: ...


class _Replica(Protocol):
    @property
    def healthy(self) -> bool: ...
    @property
    def lag(self) -> float | None: ...


class DbMetrics:
    """The database instruments of one meter provider (see the module doc).

    Use :meth:`for_provider`: instruments are created once per provider, and
    pools and replicas register with it, held weakly, so a disposed engine
    leaves the gauges instead of being kept alive by them.
    """

    _by_provider: ClassVar[weakref.WeakValueDictionary[int, DbMetrics]] = (
        weakref.WeakValueDictionary()
    )
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()
    _default: ClassVar[DbMetrics | None] = None

    @classmethod
    def for_provider(cls, provider: MeterProvider | None = None) -> DbMetrics:
        """The instruments for ``provider`` (None: the global provider)."""
        with cls._cache_lock:
            if provider is None:
                if cls._default is None:
                    cls._default = cls(None)
                return cls._default
            found = cls._by_provider.get(id(provider))
            if found is None or found._provider is not provider:
                found = cls(provider)
                cls._by_provider[id(provider)] = found
            return found

    def __init__(self, provider: MeterProvider | None) -> None:
        self._provider = provider
        self._lock = threading.Lock()
        self._pools: dict[int, tuple[weakref.ref[Any], Callable[[Any], _Pool | None], Attributes]]
        self._pools = {}
        self._replicas: dict[int, tuple[weakref.ref[Any], Attributes]] = {}
        meter = metrics.get_meter("freightscale", meter_provider=provider)
        meter.create_observable_gauge(
            "freightscale.db.pool.connections.in_use",
            callbacks=[self._in_use],
            unit="{connection}",
            description="Connections checked out of the pool.",
        )
        meter.create_observable_gauge(
            "freightscale.db.pool.connections.idle",
            callbacks=[self._idle],
            unit="{connection}",
            description="Connections idle in the pool.",
        )
        meter.create_observable_gauge(
            "freightscale.db.pool.connections.overflow",
            callbacks=[self._overflow],
            unit="{connection}",
            description="Connections open beyond pool_size.",
        )
        meter.create_observable_gauge(
            "freightscale.db.replica.lag",
            callbacks=[self._lag],
            unit="s",
            description="Replay lag of a read replica at its last health check.",
        )
        meter.create_observable_gauge(
            "freightscale.db.replica.healthy",
            callbacks=[self._healthy],
            unit="1",
            description="1 while a replica is in rotation, 0 while it is out.",
        )
        self._checkout_wait = meter.create_histogram(
            "freightscale.db.pool.checkout.wait",
            unit="s",
            description="Seconds spent waiting for a pooled connection.",
        )
        self._timeouts = meter.create_counter(
            "freightscale.db.pool.checkout.timeouts",
            unit="{timeout}",
            description="Checkouts that gave up after pool_timeout.",
        )
        self._unavailable = meter.create_counter(
            "freightscale.db.unavailable",
            unit="{request}",
            description="Requests answered 503 because the database was unavailable.",
        )
        self._store_errors = meter.create_counter(
            "freightscale.db.read_your_writes.errors",
            unit="{error}",
            description="Read-your-writes marker store failures (reads went to the primary).",
        )

    def observe_pool(
        self, owner: object, get_pool: Callable[[Any], _Pool | None], attrs: Attributes
    ) -> None:
        """Report the pool ``get_pool(owner)`` in the connection gauges while ``owner`` lives."""
        with self._lock:
            self._pools[id(owner)] = (weakref.ref(owner), get_pool, dict(attrs))

    def observe_replica(self, replica: _Replica, attrs: Attributes) -> None:
        """Report ``replica``'s health and lag while it lives."""
        with self._lock:
            self._replicas[id(replica)] = (weakref.ref(replica), dict(attrs))

    def _live_pools(self) -> list[tuple[_Pool, Attributes]]:
        out = []
        with self._lock:
            for key, (ref, get_pool, attrs) in list(self._pools.items()):
                owner = ref()
                if owner is None:
                    del self._pools[key]
                    continue
                pool = get_pool(owner)
                if pool is not None:
                    out.append((pool, attrs))
        return out

    def _live_replicas(self) -> list[tuple[_Replica, Attributes]]:
        out = []
        with self._lock:
            for key, (ref, attrs) in list(self._replicas.items()):
                replica = ref()
                if replica is None:
                    del self._replicas[key]
                else:
                    out.append((replica, attrs))
        return out

    def _in_use(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(pool.checkedout(), attrs) for pool, attrs in self._live_pools()]

    def _idle(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(pool.checkedin(), attrs) for pool, attrs in self._live_pools()]

    def _overflow(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(max(0, pool.overflow()), attrs) for pool, attrs in self._live_pools()]

    def _lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(replica.lag, attrs)
            for replica, attrs in self._live_replicas()
            if replica.lag is not None
        ]

    def _healthy(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(int(replica.healthy), attrs) for replica, attrs in self._live_replicas()
        ]

    def record_checkout(self, seconds: float, attrs: Attributes) -> None:
        """Record the wait of one successful checkout."""
        self._checkout_wait.record(seconds, attrs)

    def record_timeout(self, attrs: Attributes) -> None:
        """Count one checkout that timed out."""
        self._timeouts.add(1, attrs)

    def record_unavailable(self, name: str, reason: str) -> None:
        """Count one request answered 503."""
        self._unavailable.add(1, {"db.pool.name": name, "reason": reason})

    def record_store_error(self) -> None:
        """Count one read-your-writes marker store failure."""
        self._store_errors.add(1)
