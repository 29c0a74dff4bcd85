"""PostgreSQL store: one SQLAlchemy Core table, atomic upserts, batched expiry sweep.

Rows live in one table (``freightscale_store`` by default)::

    key         text COLLATE "C" PRIMARY KEY   "<namespace>:<key>"
    value       bytea NOT NULL
    expires_at  timestamptz NULL               indexed; NULL = never expires

Every write is a single ``INSERT … ON CONFLICT (key) DO UPDATE`` and ``incr``
adds on the server with ``RETURNING``, so concurrent app instances never
race. Expiry times come from the server's clock (``now()``), so instances
with skewed clocks agree. Expired rows are invisible at once and deleted in
small ``FOR UPDATE SKIP LOCKED`` batches by :meth:`PostgresStore.sweep_expired`,
which a background task started on first use calls every ``sweep_interval``.

Every driver error passes through :func:`_translate` (the one choke point)
and comes out as :class:`~freightscale.exceptions.StoreError` or
:class:`~freightscale.exceptions.StoreUnavailableError`, chained with ``from``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Interval,
    LargeBinary,
    MetaData,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import ColumnElement

from freightscale.exceptions import (
    ConfigurationError,
    MissingDependencyError,
    StoreError,
    StoreUnavailableError,
)
from freightscale.stores.base import Store, join_namespace
from freightscale.telemetry import get_counter

__all__ = ["PostgresStore"]

_log = logging.getLogger("freightscale.stores.postgres")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_DRIVERS = ("postgresql", "postgres", "postgresql+asyncpg")
# B-tree entries are limited to about 2.7 kB; longer keys are stored hashed.
_MAX_KEY_BYTES = 512
_INT64 = 2**63
# SQLSTATE classes meaning "the server is unreachable, overloaded or going away":
# 08 connection exception, 53 insufficient resources, 57 operator intervention
# (57014 = statement timeout, 57P01 = admin shutdown), 58 system error.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")


def _translate(exc: BaseException, *, data_error: str | None = None) -> Exception:
    """Map a driver error to the freightscale exception to raise ``from`` it."""
    sqlstate: str | None = getattr(getattr(exc, "orig", exc), "sqlstate", None)
    if data_error is not None and sqlstate is not None and sqlstate.startswith("22"):
        return ValueError(data_error)
    unavailable = (
        isinstance(exc, OSError | TimeoutError | sa_exc.TimeoutError)
        or (sqlstate is not None and sqlstate.startswith(_UNAVAILABLE_CLASSES))
        or (isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated)
        or (sqlstate is None and isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError))
        or (sqlstate is None and type(exc).__module__.startswith("asyncpg"))
    )
    kind = "unavailable" if unavailable else "error"
    get_counter("freightscale.store.errors").add(1, {"store": "postgres", "operation": kind})
    if isinstance(exc, TimeoutError):
        message = "PostgreSQL did not answer in time"
    else:
        # Name the driver's error, never SQLAlchemy's text: it carries the
        # statement's parameters, i.e. the stored values.
        orig = getattr(exc, "orig", None) or exc
        name = type(orig.__cause__ or orig).__name__
        status = "is unavailable" if unavailable else "store error"
        message = f"PostgreSQL {status}: {name}: {orig}"[:300]
    return StoreUnavailableError(message) if unavailable else StoreError(message)


def _is_driver_error(exc: BaseException) -> bool:
    return isinstance(exc, sa_exc.SQLAlchemyError | OSError | TimeoutError) or type(
        exc
    ).__module__.startswith("asyncpg")


def _check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise ConfigurationError(f"PostgresStore {name}={value!r} must be between {low} and {high}")


def _make_table(name: str) -> Table:
    table = Table(
        name,
        MetaData(),
        # "C" collation: byte-wise order, so the primary key index also serves
        # the ``LIKE 'ns:%'`` of delete_all.
        Column("key", Text(collation="C"), primary_key=True),
        Column("value", LargeBinary, nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=True),
    )
    Index(f"{name}_expires_at_idx", table.c.expires_at)
    return table


class _Statements:
    """The store's SQL, built once per table and cached compiled by SQLAlchemy."""

    def __init__(self, t: Table) -> None:
        key = bindparam("key", type_=Text)
        live = or_(t.c.expires_at.is_(None), t.c.expires_at > func.now())
        expired = and_(t.c.expires_at.is_not(None), t.c.expires_at <= func.now())
        self.get = select(t.c.value).where(t.c.key == key, live)
        self.exists = select(t.c.key).where(t.c.key == key, live)
        self.ttl = select(func.extract("epoch", t.c.expires_at - func.now())).where(
            t.c.key == key, live
        )
        self.delete = delete(t).where(t.c.key == key).returning(live)
        upsert = pg_insert(t).values(
            key=key,
            value=bindparam("value", type_=LargeBinary),
            # now() + NULL is NULL: no ttl, no expiry.
            expires_at=func.now() + bindparam("ttl", type_=Interval),
        )
        self.set = upsert.on_conflict_do_update(
            index_elements=[t.c.key],
            set_={"value": upsert.excluded.value, "expires_at": upsert.excluded.expires_at},
        )
        utf8: ColumnElement[str] = literal_column("'UTF8'")
        added = cast(func.convert_from(t.c.value, utf8), BigInteger) + bindparam(
            "amount", type_=BigInteger
        )
        # An expired row restarts the counter (and its window) as if absent;
        # a live row keeps the expiry it was created with.
        self.incr = upsert.on_conflict_do_update(
            index_elements=[t.c.key],
            set_={
                "value": case(
                    (expired, upsert.excluded.value),
                    else_=func.convert_to(cast(added, Text), utf8),
                ),
                "expires_at": case((expired, upsert.excluded.expires_at), else_=t.c.expires_at),
            },
        ).returning(t.c.value)
        # By ctid: the planner then fetches the locked rows directly (Tid Scan)
        # instead of joining them back to the table. The name is a checked
        # identifier, so formatting it into the SQL is safe.
        self.sweep = text(
            f'DELETE FROM "{t.name}" WHERE ctid = ANY(ARRAY('  # noqa: S608
            f'SELECT ctid FROM "{t.name}" WHERE expires_at < now() '
            "LIMIT :batch FOR UPDATE SKIP LOCKED))"
        ).bindparams(bindparam("batch", type_=BigInteger))
        self.delete_everything = delete(t)
        self.delete_prefix = delete(t).where(t.c.key.like(bindparam("pattern"), escape="/"))


@dataclass(eq=False)
class _Shared:
    """State shared by a root store and all its namespace views."""

    engine: AsyncEngine
    table: Table
    sql: _Statements
    owns_engine: bool
    auto_create: bool
    sweep_batch_size: int
    sweep_interval: float | None
    statement_timeout_ms: int | None
    check_timeout: float
    schema_ready: bool = False
    schema_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sweeper: asyncio.Task[None] | None = None
    closed: bool = False


class PostgresStore:
    """A :class:`~freightscale.stores.Store` kept in a PostgreSQL table.

    Pass the app's own ``AsyncEngine`` so the store shares its pool, or use
    :meth:`from_url` to get a store with its own small pool.

    Args:
        engine: a SQLAlchemy ``AsyncEngine`` on PostgreSQL (asyncpg driver).
        table: table name, a plain SQL identifier (created if missing).
        namespace: key prefix of this store ("" for the whole table).
        auto_create: create the table on first use; False when migrations own it.
        sweep_batch_size: rows deleted per expiry-sweep transaction (1 to 100,000).
        sweep_interval: seconds between background sweeps; None disables them.
        statement_timeout: seconds; when set, each operation runs in a
            transaction with ``SET LOCAL statement_timeout`` (four round trips
            instead of one). Leave None when the engine's connections already
            have a ``statement_timeout`` (``from_url`` sets it that way).
        check_timeout: seconds :meth:`check` waits for ``SELECT 1``.
        dispose_engine: dispose the engine in :meth:`aclose` (True when the
            store created it).

    Raises:
        ConfigurationError: for an invalid table name, namespace or bound.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        table: str = "freightscale_store",
        namespace: str = "",
        auto_create: bool = True,
        sweep_batch_size: int = 1000,
        sweep_interval: float | None = 60.0,
        statement_timeout: float | None = None,
        check_timeout: float = 2.0,
        dispose_engine: bool = False,
    ) -> None:
        if engine.dialect.name != "postgresql":
            raise ConfigurationError(
                f"PostgresStore needs a PostgreSQL engine, got dialect {engine.dialect.name!r}"
            )
        if not _IDENTIFIER.fullmatch(table):
            raise ConfigurationError(
                f"PostgresStore table={table!r} must be a plain SQL identifier "
                "(letters, digits and _, not starting with a digit, at most 63 characters)"
            )
        if namespace:
            try:
                join_namespace("", namespace)
            except ValueError as exc:
                raise ConfigurationError(f"PostgresStore namespace: {exc}") from None
        _check_range("sweep_batch_size", sweep_batch_size, 1, 100_000)
        _check_range("sweep_interval", sweep_interval, 0.01, 86_400)
        _check_range("statement_timeout", statement_timeout, 0.001, 3600)
        _check_range("check_timeout", check_timeout, 0.01, 300)
        table_ = _make_table(table)
        shared = _Shared(
            engine=engine,
            table=table_,
            sql=_Statements(table_),
            owns_engine=dispose_engine,
            auto_create=auto_create,
            sweep_batch_size=sweep_batch_size,
            sweep_interval=sweep_interval,
            statement_timeout_ms=None
            if statement_timeout is None
            else max(1, round(statement_timeout * 1000)),
            check_timeout=check_timeout,
        )
        self._init_view(shared, namespace, root=True)

    def _init_view(self, shared: _Shared, namespace: str, *, root: bool) -> None:
        self.namespace = namespace
        self._shared = shared
        self._root = root
        self._prefix = f"{namespace}:" if namespace else ""
        self._sql = shared.sql

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        connect_timeout: float = 5.0,
        statement_timeout: float | None = 5.0,
        pool_size: int = 5,
        max_overflow: int = 5,
        pool_timeout: float = 5.0,
        pool_pre_ping: bool = False,
        **options: Any,
    ) -> PostgresStore:
        """Return a store with its own engine for ``url`` (disposed by :meth:`aclose`).

        ``postgresql://`` and ``postgres://`` URLs are switched to the asyncpg
        driver. Creating the store does no I/O; the first operation connects.

        Args:
            url: ``postgresql://user:password@host:port/database``.
            connect_timeout: seconds to open a connection.
            statement_timeout: seconds, set as the connections'
                ``statement_timeout`` (None: the server's default).
            pool_size: connections kept open.
            max_overflow: extra connections under load.
            pool_timeout: seconds to wait for a free pooled connection.
            pool_pre_ping: test each connection as it leaves the pool. Off by
                default: it costs three round trips per operation, and
                without it a server restart fails one operation (as
                ``StoreUnavailableError``) before the pool replaces its
                connections.
            **options: passed to the constructor (``table``, ``namespace``, ...).

        Raises:
            ConfigurationError: for a non-PostgreSQL URL or a bad option.
            MissingDependencyError: when asyncpg is not installed.
        """
        try:
            parsed = make_url(url)
        except sa_exc.ArgumentError as exc:
            raise ConfigurationError(f"PostgresStore URL is not a valid URL: {exc}") from None
        if parsed.drivername not in _DRIVERS:
            raise ConfigurationError(
                f"PostgresStore URL scheme {parsed.drivername!r} is not one of "
                f"{', '.join(_DRIVERS)}"
            )
        if importlib.util.find_spec("asyncpg") is None:
            raise MissingDependencyError("asyncpg", extra="postgres", feature="PostgresStore")
        _check_range("connect_timeout", connect_timeout, 0.01, 300)
        _check_range("statement_timeout", statement_timeout, 0.001, 3600)
        _check_range("pool_size", pool_size, 1, 1000)
        _check_range("max_overflow", max_overflow, 0, 1000)
        _check_range("pool_timeout", pool_timeout, 0.01, 300)
        server_settings = {"application_name": "freightscale-store"}
        if statement_timeout is not None:
            server_settings["statement_timeout"] = str(max(1, round(statement_timeout * 1000)))
        engine = create_async_engine(
            parsed.set(drivername="postgresql+asyncpg"),
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_pre_ping=pool_pre_ping,
            pool_recycle=1800,
            connect_args={
                "timeout": connect_timeout,
                # Client-side guard for a server that stops answering altogether.
                "command_timeout": None if statement_timeout is None else statement_timeout + 1,
                "server_settings": server_settings,
            },
        )
        return cls(engine, dispose_engine=True, **options)

    def __repr__(self) -> str:
        url = self._shared.engine.url.render_as_string(hide_password=True)
        return (
            f"PostgresStore(url={url!r}, table={self._shared.table.name!r}, "
            f"namespace={self.namespace!r})"
        )

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine the store runs on (shared by all its views)."""
        return self._shared.engine

    @property
    def table(self) -> Table:
        """The SQLAlchemy ``Table`` holding the rows."""
        return self._shared.table

    def _key(self, key: str) -> str:
        full = self._prefix + key
        try:
            raw = full.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            raw = b""
        if not raw or len(raw) > _MAX_KEY_BYTES or "\x00" in full:
            # PostgreSQL text holds no NUL or lone surrogate, and a B-tree
            # entry is size-limited: such keys are stored as a digest, still
            # under the namespace prefix so delete_all() finds them.
            digest = hashlib.sha256(full.encode("utf-8", "surrogatepass")).hexdigest()
            return f"{self._prefix}#sha256:{digest}"
        return full

    # -- the choke point -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connect(
        self,
        *,
        schema: Literal["auto", "always", "skip"] = "auto",
        deadline: float | None = None,
        data_error: str | None = None,
    ) -> AsyncIterator[AsyncConnection]:
        """Yield a connection for one statement; translate every driver error.

        Args:
            schema: create the table first if not done yet: "auto" only when
                ``auto_create``, "always" regardless, "skip" never.
            deadline: overall seconds for connecting and the caller's statements.
            data_error: message of the ``ValueError`` raised for bad data
                (SQLSTATE class 22) instead of a ``StoreError``.
        """
        shared = self._shared
        if shared.closed:
            raise StoreError("PostgresStore is closed")
        try:
            async with asyncio.timeout(deadline):
                wanted = schema == "always" or (schema == "auto" and shared.auto_create)
                if wanted and not shared.schema_ready:
                    await self._create_schema(shared)
                async with shared.engine.connect() as conn:
                    if shared.statement_timeout_ms is None:
                        # Every operation is one statement: autocommit saves
                        # the BEGIN and COMMIT round trips.
                        yield await conn.execution_options(isolation_level="AUTOCOMMIT")
                    else:
                        async with conn.begin():
                            await conn.execute(
                                text(
                                    f"SET LOCAL statement_timeout = {shared.statement_timeout_ms:d}"
                                )
                            )
                            yield conn
        except Exception as exc:
            if _is_driver_error(exc):
                raise _translate(exc, data_error=data_error) from exc
            raise
        if shared.sweeper is None and shared.sweep_interval is not None:
            self.start_sweeper()

    async def _create_schema(self, shared: _Shared) -> None:
        async with shared.schema_lock:
            if shared.schema_ready:
                return
            async with shared.engine.begin() as conn:
                # Serialise creators across processes: concurrent CREATE TABLE
                # IF NOT EXISTS can still collide on the catalog's unique index.
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                    {"name": f"freightscale.store.{shared.table.name}"},
                )
                await conn.run_sync(shared.table.metadata.create_all)
            shared.schema_ready = True

    # -- the Store protocol ----------------------------------------------------------

    async def create_schema(self) -> None:
        """Create the table and its expiry index if missing.

        Safe to run from several processes at once. Called on first use
        unless ``auto_create=False``.
        """
        async with self._connect(schema="always"):
            pass

    async def get(self, key: str) -> bytes | None:
        """Return the value under ``key``, or None if absent or expired."""
        async with self._connect() as conn:
            value = (await conn.execute(self._sql.get, {"key": self._key(key)})).scalar()
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes, *, expires_in: float | None = None) -> None:
        """Store ``value`` under ``key``, expiring after ``expires_in`` seconds (None: never)."""
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"store values are bytes, got {type(value).__name__}")
        if expires_in is not None and expires_in <= 0:
            await self.delete(key)
            return
        ttl = None if expires_in is None else timedelta(seconds=expires_in)
        params = {"key": self._key(key), "value": bytes(value), "ttl": ttl}
        async with self._connect() as conn:
            await conn.execute(self._sql.set, params)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; return True if it held a live value."""
        async with self._connect() as conn:
            was_live = (await conn.execute(self._sql.delete, {"key": self._key(key)})).scalar()
        return bool(was_live)

    async def exists(self, key: str) -> bool:
        """Return True if ``key`` holds an unexpired value."""
        async with self._connect() as conn:
            found = (await conn.execute(self._sql.exists, {"key": self._key(key)})).scalar()
        return found is not None

    async def expires_in(self, key: str) -> float | None:
        """Seconds until ``key`` expires; None if absent, expired or never expiring."""
        async with self._connect() as conn:
            seconds = (await conn.execute(self._sql.ttl, {"key": self._key(key)})).scalar()
        return None if seconds is None else float(seconds)

    async def incr(self, key: str, amount: int = 1, *, expires_in: float | None = None) -> int:
        """Atomically add ``amount`` to the integer under ``key`` on the server.

        A missing or expired key counts from 0 and gets ``expires_in``; a live
        key keeps the expiry it was created with.

        Raises:
            ValueError: if the value under ``key`` is not an integer, or the
                result leaves the 64-bit range.
        """
        if not -_INT64 <= amount < _INT64:
            raise ValueError(f"incr amount {amount} is outside the 64-bit integer range")
        params = {
            "key": self._key(key),
            "value": str(amount).encode(),
            "ttl": None if expires_in is None else timedelta(seconds=expires_in),
            "amount": amount,
        }
        problem = f"value under {key!r} is not a 64-bit integer"
        async with self._connect(data_error=problem) as conn:
            value = (await conn.execute(self._sql.incr, params)).scalar_one()
        return int(value)

    async def delete_all(self) -> None:
        """Remove every key of this namespace (and of namespaces nested in it)."""
        async with self._connect() as conn:
            if self._prefix:
                pattern = re.sub(r"([/%_])", r"/\1", self._prefix) + "%"
                await conn.execute(self._sql.delete_prefix, {"pattern": pattern})
            else:
                await conn.execute(self._sql.delete_everything)

    async def check(self) -> None:
        """Run ``SELECT 1`` within ``check_timeout``.

        Raises:
            StoreUnavailableError: if PostgreSQL is down or does not answer in time.
        """
        async with self._connect(schema="skip", deadline=self._shared.check_timeout) as conn:
            await conn.execute(select(1))

    def with_namespace(self, namespace: str) -> Store:
        """Return a view under ``namespace`` sharing this store's engine and sweeper."""
        view = object.__new__(PostgresStore)
        view._init_view(self._shared, join_namespace(self.namespace, namespace), root=False)
        return view

    # -- expiry sweep and lifecycle ---------------------------------------------------

    async def sweep_expired(self, batch_size: int | None = None) -> int:
        """Delete expired rows of the whole table in batches; return how many.

        Each batch is its own short transaction that skips rows other
        transactions hold locked, so the sweep never waits on a lock or
        holds many. It stops when a batch comes back short.
        """
        batch = self._shared.sweep_batch_size if batch_size is None else batch_size
        _check_range("batch_size", batch, 1, 100_000)
        total = 0
        while True:
            async with self._connect() as conn:
                deleted = (await conn.execute(self._sql.sweep, {"batch": batch})).rowcount
            total += deleted
            if deleted < batch:
                break
            await asyncio.sleep(0)  # let requests run between batches
        if total:
            get_counter("freightscale.store.expired_swept").add(total, {"store": "postgres"})
        return total

    def start_sweeper(self) -> None:
        """Start the background expiry sweep (idempotent; called on first use).

        Does nothing when ``sweep_interval`` is None or the store is closed.
        """
        shared = self._shared
        if shared.sweeper is not None or shared.sweep_interval is None or shared.closed:
            return
        shared.sweeper = asyncio.get_running_loop().create_task(
            self._sweep_forever(shared.sweep_interval),
            name=f"freightscale-store-sweeper:{shared.table.name}",
        )

    async def _sweep_forever(self, interval: float) -> None:
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep_expired()
            except Exception as exc:  # the task must outlive any failure
                if not failing:  # one log line per outage, not per round
                    _log.warning("PostgresStore expiry sweep failed, will retry: %s", exc)
                failing = True
            else:
                if failing:
                    _log.info("PostgresStore expiry sweep recovered")
                failing = False

    async def aclose(self) -> None:
        """Stop the sweeper and, if the store created its engine, dispose of it.

        Views share the root's resources: closing a view does nothing.
        """
        shared = self._shared
        if not self._root or shared.closed:
            return
        shared.closed = True
        task, shared.sweeper = shared.sweeper, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # aclose() itself was cancelled: do not swallow that
        if shared.owns_engine:
            await shared.engine.dispose()
