"""The :class:`PostgresStore` class: construction, views and the Store protocol.

Private to :mod:`freightscale.stores.postgres`, which re-exports it and
describes the table; connections, the expiry sweep and ``aclose`` come from
its base class in :mod:`freightscale.stores._postgres_core`.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncEngine

from freightscale.exceptions import ConfigurationError
from freightscale.stores._postgres_core import _PostgresCore
from freightscale.stores._postgres_driver import _check_range, _create_engine
from freightscale.stores._postgres_sql import _IDENTIFIER, _make_table, _Shared, _Statements
from freightscale.stores.base import Store, join_namespace, store_bytes

# B-tree entries are limited to about 2.7 kB; longer keys are stored hashed.
_MAX_KEY_BYTES = 512
_INT64 = 2**63


class PostgresStore(_PostgresCore):
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
        engine = _create_engine(
            url,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_pre_ping=pool_pre_ping,
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
        value = store_bytes(value)
        if expires_in is not None and expires_in <= 0:
            await self.delete(key)
            return
        ttl = None if expires_in is None else timedelta(seconds=expires_in)
        params = {"key": self._key(key), "value": value, "ttl": ttl}
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
