"""The PostgreSQL store's connection choke point, expiry sweep and lifecycle.

:class:`_PostgresCore` is the base of :class:`~freightscale.stores.postgres.PostgresStore`:
it owns how an operation gets a connection (schema creation on first use,
optional ``SET LOCAL statement_timeout``, driver error translation) and the
background sweep that deletes expired rows. Private to
:mod:`freightscale.stores.postgres`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from freightscale.exceptions import StoreError
from freightscale.stores._postgres_driver import _check_range, _is_driver_error, _translate
from freightscale.stores._postgres_sql import _Shared, _Statements
from freightscale.telemetry import get_counter

# The public module's name: the sweep's log lines (and docs/stores.md) use it.
_log = logging.getLogger("freightscale.stores.postgres")


class _PostgresCore:
    """Connections, expiry sweep and ``aclose`` shared by a store and its views."""

    _shared: _Shared
    _root: bool
    _sql: _Statements

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
