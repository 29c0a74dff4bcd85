"""Engine factory: one pooled ``AsyncEngine`` per server, configured from settings.

Every PostgreSQL engine gets a bounded, pre-pinged, recycled pool, a connect
timeout, a server-side ``statement_timeout``, an ``application_name`` and
the prepared-statement caches (or none, for PgBouncer in transaction mode).
The pool is :class:`InstrumentedPool`, which reports checkout waits and
timeouts to OpenTelemetry.
"""

from __future__ import annotations

import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar

from opentelemetry.metrics import MeterProvider
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, StaticPool

from freightscale.db.metrics import Attributes, DbMetrics
from freightscale.exceptions import ConfigurationError, MissingDependencyError
from freightscale.settings.database import DatabaseSettings

__all__ = ["Engines", "InstrumentedPool", "create_engines", "engine_label", "engine_options"]


class InstrumentedPool(AsyncAdaptedQueuePool):
    """``AsyncAdaptedQueuePool`` that times every checkout and counts timeouts.

    Subclassed per engine (see :func:`_pool_class`) so the labels survive
    SQLAlchemy's ``recreate()`` on ``dispose()``.
    """

    metric_attributes: ClassVar[Attributes] = {}
    db_metrics: ClassVar[DbMetrics | None] = None

    def _do_get(self) -> ConnectionPoolEntry:
        started = time.perf_counter()
        try:
            entry = super()._do_get()
        except sa_exc.TimeoutError:
            if self.db_metrics is not None:
                self.db_metrics.record_timeout(self.metric_attributes)
            raise
        if self.db_metrics is not None:
            self.db_metrics.record_checkout(time.perf_counter() - started, self.metric_attributes)
        return entry


def _pool_class(attrs: Attributes, db_metrics: DbMetrics | None) -> type[InstrumentedPool]:
    name = f"InstrumentedPool_{attrs['db.pool.name'].replace('-', '_')}"
    namespace = {"metric_attributes": dict(attrs), "db_metrics": db_metrics}
    return type(name, (InstrumentedPool,), namespace)


@dataclass(frozen=True, slots=True)
class Engines:
    """The primary engine and one engine per read replica.

    Attributes:
        primary: the engine every write (and every read without replicas) uses.
        replicas: one engine per ``replica_urls`` entry, in order.
    """

    primary: AsyncEngine
    replicas: tuple[AsyncEngine, ...] = field(default=())
    metrics: DbMetrics = field(default_factory=DbMetrics.for_provider)

    @property
    def all(self) -> tuple[AsyncEngine, ...]:
        """The primary followed by the replicas."""
        return (self.primary, *self.replicas)

    async def dispose(self) -> None:
        """Close every pooled connection of every engine."""
        for engine in self.all:
            await engine.dispose()


def _unique_statement_name() -> str:
    # PgBouncer transaction mode: a name must never be reused on a server
    # connection that another client prepared it on.
    return f"__fs_{uuid.uuid4().hex}__"


def engine_options(
    settings: DatabaseSettings,
    url: str,
    *,
    role: str = "primary",
    name: str = "primary",
    db_metrics: DbMetrics | None = None,
) -> dict[str, Any]:
    """Return the keyword arguments :func:`create_async_engine` gets for ``url``.

    Exposed so benchmarks and tests can vary one option (``poolclass``)
    while keeping the rest identical. Pass the ``db_metrics`` the pool reports to.
    """
    parsed = make_url(url)
    attrs = {"db.role": role, "db.pool.name": name}
    options: dict[str, Any] = {
        "pool_pre_ping": settings.pool_pre_ping,
        "pool_recycle": settings.pool_recycle,
    }
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:") or "mode=memory" in url:
            # One shared in-memory database: a pool of several would see
            # several empty databases.
            return {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        options.update(
            poolclass=_pool_class(attrs, db_metrics),
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.pool_timeout,
            connect_args={"timeout": settings.connect_timeout},
        )
        return options
    server_settings = {"application_name": settings.application_name}
    if settings.statement_timeout_ms:
        server_settings["statement_timeout"] = str(settings.statement_timeout_ms)
    connect_args: dict[str, Any] = {
        "timeout": settings.connect_timeout,
        "command_timeout": settings.command_timeout,
        "server_settings": server_settings,
    }
    if settings.pgbouncer_transaction_mode:
        connect_args.update(
            statement_cache_size=0,
            prepared_statement_cache_size=0,
            prepared_statement_name_func=_unique_statement_name,
        )
    else:
        connect_args.update(
            statement_cache_size=settings.statement_cache_size,
            prepared_statement_cache_size=settings.statement_cache_size,
        )
    options.update(
        poolclass=_pool_class(attrs, db_metrics),
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        connect_args=connect_args,
    )
    return options


def _driver_url(url: str) -> str:
    """Pin the async driver: ``postgresql://`` means asyncpg, ``sqlite://`` aiosqlite."""
    scheme, sep, rest = url.partition("://")
    if scheme == "postgresql":
        return f"postgresql+asyncpg{sep}{rest}"
    if scheme == "sqlite":
        return f"sqlite+aiosqlite{sep}{rest}"
    return url


_labels: weakref.WeakKeyDictionary[Engine, tuple[str, str]] = weakref.WeakKeyDictionary()


def engine_label(engine: AsyncEngine | Engine) -> tuple[str, str]:
    """``(role, name)`` of an engine made by :func:`create_engines` (else ``("primary", "?")``)."""
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    return _labels.get(sync, ("primary", "?"))


def _create(
    settings: DatabaseSettings, url: str, role: str, name: str, db_metrics: DbMetrics
) -> AsyncEngine:
    url = _driver_url(url)
    options = engine_options(settings, url, role=role, name=name, db_metrics=db_metrics)
    try:
        engine = create_async_engine(url, **options)
    except ModuleNotFoundError as exc:
        if exc.name == "asyncpg":
            raise MissingDependencyError(
                "asyncpg", extra="postgres", feature="a PostgreSQL database"
            ) from exc
        if exc.name == "aiosqlite":
            raise MissingDependencyError(
                "aiosqlite", extra="sqlite", feature="the embedded SQLite database"
            ) from exc
        raise
    except (sa_exc.ArgumentError, TypeError, ValueError) as exc:
        setting = "URL" if role == "primary" else "REPLICA_URLS"
        password = make_url(url).password
        shown = str(exc) if not password or str(password) not in str(exc) else "(details hidden)"
        raise ConfigurationError(
            f"FREIGHTSCALE_DATABASE__{setting}: cannot create the {name} engine: "
            f"{type(exc).__name__}: {shown}"
        ) from exc
    _labels[engine.sync_engine] = (role, name)
    if isinstance(engine.pool, InstrumentedPool):
        attrs = {"db.role": role, "db.pool.name": name}
        db_metrics.observe_pool(engine.sync_engine, lambda e: e.pool, attrs)
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers proceed during a write; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def create_engines(
    settings: DatabaseSettings, *, meter_provider: MeterProvider | None = None
) -> Engines:
    """Create the primary engine and one per replica from ``settings``.

    No connection is opened here; pools fill on first use.

    Raises:
        ConfigurationError: an engine cannot be built from a URL.
        MissingDependencyError: asyncpg / aiosqlite is not installed.
    """
    db_metrics = DbMetrics.for_provider(meter_provider)
    primary = _create(settings, settings.effective_url, "primary", "primary", db_metrics)
    replicas = tuple(
        _create(settings, url.get_secret_value(), "replica", f"replica-{index}", db_metrics)
        for index, url in enumerate(settings.replica_urls)
    )
    return Engines(primary=primary, replicas=replicas, metrics=db_metrics)
