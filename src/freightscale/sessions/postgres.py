"""PostgreSQL session backend (SQLAlchemy 2 async on asyncpg).

One table, created on first use (never at start-up)::

    freightscale_sessions(id text PRIMARY KEY, data jsonb NULL, version bigint,
                          expires_at timestamptz)  + an index on expires_at

A write is ``UPDATE … WHERE id = … AND version = … RETURNING`` (or, for a new
session, ``INSERT … ON CONFLICT DO UPDATE … WHERE expired``), so concurrent
writers compare-and-set on the server. A background task, started lazily and
stopped by :meth:`PostgresSessionBackend.aclose`, deletes expired rows in
small ``FOR UPDATE SKIP LOCKED`` batches so it never holds long locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Column, DateTime, Index, MetaData, Table, Text, select, text
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from freightscale.exceptions import StoreError, StoreUnavailableError
from freightscale.sessions.backends import (
    CasResult,
    CorruptSessionError,
    SessionData,
    SessionRecord,
)

__all__ = ["PostgresSessionBackend"]

T = TypeVar("T")
logger = logging.getLogger("freightscale.sessions")


def _table(name: str) -> Table:
    return Table(
        name,
        MetaData(),
        Column("id", Text, primary_key=True),
        Column("data", JSONB(none_as_null=True), nullable=True),
        Column("version", BigInteger, nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Index(f"{name}_expires_at_idx", "expires_at"),
    )


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class PostgresSessionBackend:
    """Sessions in a PostgreSQL table.

    Args:
        engine: an async SQLAlchemy engine on ``postgresql+asyncpg``.
        table_name: the sessions table.
        timeout: seconds one call may take.
        cleanup_interval: seconds between cleanup runs.
        cleanup_batch_size: rows per cleanup ``DELETE``.
        owns_engine: dispose the engine in :meth:`aclose`.
        clock: wall clock in Unix seconds.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        table_name: str = "freightscale_sessions",
        timeout: float = 2.0,
        cleanup_interval: float = 300.0,
        cleanup_batch_size: int = 500,
        owns_engine: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.table = _table(table_name)
        self._timeout = timeout
        self._cleanup_interval = cleanup_interval
        self._batch = cleanup_batch_size
        self._owns_engine = owns_engine
        self._clock = clock
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._cleanup_task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, pool_size: int = 5, **options: Any) -> PostgresSessionBackend:
        """Create a backend with its own small engine from a PostgreSQL URL."""
        if url.startswith("postgresql://"):
            url = "postgresql+asyncpg://" + url.removeprefix("postgresql://")
        timeout = float(options.get("timeout", 2.0))
        engine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=timeout,
            pool_pre_ping=True,
            connect_args={"timeout": timeout, "command_timeout": timeout},
        )
        return cls(engine, owns_engine=True, **options)

    def __repr__(self) -> str:
        return f"PostgresSessionBackend(table={self.table.name!r})"

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                if not self._ready:
                    await self._prepare()
                return await operation()
        except TimeoutError as exc:
            raise StoreUnavailableError(f"postgres did not answer within {self._timeout}s") from exc
        except (PoolTimeoutError, OSError) as exc:
            raise StoreUnavailableError(f"postgres unavailable: {exc}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated or _is_connection_error(exc):
                raise StoreUnavailableError(f"postgres unavailable: {exc.orig!r}") from exc
            raise StoreError(f"postgres error: {exc.orig!r}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"postgres error: {exc!r}") from exc

    async def _prepare(self) -> None:
        async with self._ready_lock:
            if self._ready:
                return
            lock_key = zlib.crc32(self.table.name.encode())
            async with self.engine.begin() as conn:
                # Serialise CREATE TABLE IF NOT EXISTS across processes.
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key})
                await conn.run_sync(self.table.metadata.create_all, checkfirst=True)
            self._ready = True
            if self._cleanup_task is None and not self._closed:
                self._cleanup_task = asyncio.create_task(
                    self._cleanup_loop(), name="freightscale-sessions-cleanup"
                )

    def _row_record(self, row: Any) -> SessionRecord:
        data, version, expires_at = row
        if data is not None and not isinstance(data, dict):
            raise CorruptSessionError(f"stored session data is a {type(data).__name__}")
        return SessionRecord(data, int(version), expires_at.timestamp())

    async def _current(self, session_id: str) -> SessionRecord | None:
        t = self.table
        query = select(t.c.data, t.c.version, t.c.expires_at).where(
            t.c.id == session_id, t.c.expires_at > _dt(self._clock())
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return self._row_record(row) if row is not None else None

    async def load(self, session_id: str) -> SessionRecord | None:
        """One indexed ``SELECT``."""
        record = await self._call(lambda: self._current(session_id))
        return record if record is not None and record.data is not None else None

    async def compare_and_set(
        self, session_id: str, data: SessionData | None, expires_at: float, *, version: int
    ) -> CasResult:
        """``UPDATE … WHERE version = …`` or, for version 0, an insert that only
        replaces an expired row."""
        t = self.table
        now = _dt(self._clock())

        async def run() -> CasResult:
            async with self.engine.begin() as conn:
                stmt: Any
                if version == 0:
                    stmt = insert(t).values(
                        id=session_id, data=data, version=1, expires_at=_dt(expires_at)
                    )
                    stmt = stmt.on_conflict_do_update(
                        index_elements=[t.c.id],
                        set_={"data": stmt.excluded.data, "version": 1,
                              "expires_at": stmt.excluded.expires_at},
                        where=t.c.expires_at <= now,
                    ).returning(t.c.version)  # fmt: skip
                else:
                    stmt = (
                        t.update()
                        .where(t.c.id == session_id, t.c.version == version, t.c.expires_at > now)
                        .values(data=data, version=t.c.version + 1, expires_at=_dt(expires_at))
                        .returning(t.c.version)
                    )
                row = (await conn.execute(stmt)).first()
            if row is not None:
                return CasResult(True, SessionRecord(data, int(row[0]), expires_at))
            return CasResult(False, await self._current(session_id))

        return await self._call(run)

    async def delete(self, session_id: str) -> None:
        """``DELETE`` the row."""

        async def run() -> None:
            async with self.engine.begin() as conn:
                await conn.execute(self.table.delete().where(self.table.c.id == session_id))

        await self._call(run)

    async def import_many(self, items: Sequence[tuple[str, SessionData, float]]) -> list[bool]:
        """One multi-row ``INSERT … ON CONFLICT`` per call; returns which ids were created."""
        if not items:
            return []
        t = self.table
        now = _dt(self._clock())

        async def run() -> list[bool]:
            stmt: Any = insert(t).values(
                [{"id": s, "data": d, "version": 1, "expires_at": _dt(e)} for s, d, e in items]
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=[t.c.id],
                set_={"data": stmt.excluded.data, "version": 1,
                      "expires_at": stmt.excluded.expires_at},
                where=t.c.expires_at <= now,
            ).returning(t.c.id)  # fmt: skip
            async with self.engine.begin() as conn:
                created = {row[0] for row in await conn.execute(stmt)}
            return [sid in created for sid, _, _ in items]

        return await self._call(run)

    async def delete_expired(self) -> int:
        """Delete expired rows in batches of ``cleanup_batch_size``; return how many."""
        statement = text(
            f"DELETE FROM {self.table.name} WHERE id IN ("  # noqa: S608 (validated name)
            f"SELECT id FROM {self.table.name} WHERE expires_at <= :now "
            "ORDER BY expires_at LIMIT :n FOR UPDATE SKIP LOCKED)"
        )
        total = 0
        while True:

            async def run() -> int:
                async with self.engine.begin() as conn:
                    result = await conn.execute(
                        statement, {"now": _dt(self._clock()), "n": self._batch}
                    )
                return int(result.rowcount)

            deleted = await self._call(run)
            total += deleted
            if deleted < self._batch:
                return total
            await asyncio.sleep(0.01)  # let requests in between batches

    async def _cleanup_loop(self) -> None:
        while True:
            try:
                deleted = await self.delete_expired()
                if deleted:
                    logger.debug("deleted %d expired sessions", deleted)
            except StoreError as exc:
                logger.warning("session cleanup failed, will retry: %s", exc)
            await asyncio.sleep(self._cleanup_interval)

    async def check(self) -> None:
        """``SELECT 1``."""

        async def run() -> None:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        await self._call(run)

    async def aclose(self) -> None:
        """Stop the cleanup task and dispose the engine if this backend created it."""
        self._closed = True
        task, self._cleanup_task = self._cleanup_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owns_engine:
            await self.engine.dispose()


def _is_connection_error(exc: DBAPIError) -> bool:
    name = type(exc.orig).__name__ if exc.orig is not None else ""
    return any(
        marker in name
        for marker in ("ConnectionDoesNotExist", "CannotConnectNow", "ConnectionFailure",
                       "InterfaceError", "PostgresConnectionError", "TooManyConnections")
    )  # fmt: skip
