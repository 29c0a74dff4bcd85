"""Replica health: which read replicas are in rotation, checked in the background.

:class:`ReplicaSet` checks each replica every ``replica_check_interval``
seconds: it must answer within ``replica_check_timeout`` and its replay lag
must be at most ``max_replica_lag``. A replica that fails is out of rotation
until a later check passes; a disconnect the driver reports takes it out at
once. :meth:`ReplicaSet.choose` picks the next healthy one, round robin.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from freightscale.db.engines import engine_label
from freightscale.db.metrics import DbMetrics

__all__ = ["Replica", "ReplicaSet"]

logger = logging.getLogger("freightscale.db")

_CHECK_SQL = text(
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN NOT pg_is_in_recovery() THEN 0::float8 "
    "WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8 "
    "ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8 END"
)


_UNCHECKED = "not checked yet"


class Replica:
    """One read replica: its engine and its last health-check result."""

    def __init__(self, engine: AsyncEngine, name: str, db_metrics: DbMetrics) -> None:
        self.engine = engine
        self.name = name
        self.healthy = False
        self.lag: float | None = None
        self.reason: str | None = _UNCHECKED
        self.checked_at: float | None = None
        db_metrics.observe_replica(self, {"db.role": "replica", "db.pool.name": name})

    def __repr__(self) -> str:
        state = "healthy" if self.healthy else f"out ({self.reason})"
        return f"Replica({self.name!r}, {state}, lag={self.lag})"

    def _set(self, healthy: bool, reason: str | None) -> None:
        if healthy != self.healthy:
            if healthy and self.reason == _UNCHECKED:
                logger.info("replica %s in rotation", self.name)
            elif healthy:
                logger.warning("replica %s back in rotation", self.name)
            else:
                logger.warning("replica %s taken out of rotation: %s", self.name, reason)
        self.healthy = healthy
        self.reason = reason


class ReplicaSet:
    """The replicas, their health checks and the round-robin choice.

    Args:
        engines: one engine per replica.
        max_lag: seconds of replay lag beyond which a replica is out.
        check_interval: seconds between checks.
        check_timeout: seconds one check may take.
        db_metrics: where health and lag are reported (default: the global provider).
    """

    def __init__(
        self,
        engines: Sequence[AsyncEngine],
        *,
        max_lag: float,
        check_interval: float,
        check_timeout: float,
        db_metrics: DbMetrics | None = None,
    ) -> None:
        db_metrics = db_metrics if db_metrics is not None else DbMetrics.for_provider()
        self.replicas = [Replica(engine, engine_label(engine)[1], db_metrics) for engine in engines]
        self.max_lag = max_lag
        self.check_interval = check_interval
        self.check_timeout = check_timeout
        self._cursor = 0
        self._task: asyncio.Task[None] | None = None
        for replica in self.replicas:
            event.listen(replica.engine.sync_engine, "handle_error", self._on_error(replica))

    def __len__(self) -> int:
        return len(self.replicas)

    def _on_error(self, replica: Replica) -> Any:
        def handle_error(context: Any) -> None:
            if context.is_disconnect or context.connection is None:
                replica._set(
                    False, f"connection error: {type(context.original_exception).__name__}"
                )

        return handle_error

    def mark_down(self, engine: Engine | AsyncEngine, reason: str) -> None:
        """Take the replica using ``engine`` out of rotation until its next good check."""
        sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        for replica in self.replicas:
            if replica.engine.sync_engine is sync:
                replica._set(False, reason)

    def healthy(self) -> list[Replica]:
        """The replicas in rotation now."""
        return [r for r in self.replicas if r.healthy]

    def choose(self) -> AsyncEngine | None:
        """The next healthy replica's engine (round robin), or None when none is healthy."""
        healthy = [r for r in self.replicas if r.healthy]
        if not healthy:
            return None
        self._cursor = (self._cursor + 1) % len(healthy)
        return healthy[self._cursor].engine

    async def check(self, replica: Replica) -> None:
        """Check one replica now and update its place in the rotation."""
        try:
            async with asyncio.timeout(self.check_timeout):
                async with replica.engine.connect() as conn:
                    row = (await conn.execute(_CHECK_SQL)).one()
        except sa_exc.TimeoutError:
            # Its pool is exhausted by real traffic: it is answering. Keep the verdict.
            return
        except Exception as exc:
            replica.lag = None
            replica._set(False, f"health check failed: {type(exc).__name__}")
            return
        finally:
            replica.checked_at = time.monotonic()
        in_recovery, lag = bool(row[0]), row[1]
        replica.lag = None if lag is None else max(0.0, float(lag))
        if replica.lag is None:
            replica._set(False, "replay lag unknown")
        elif replica.lag > self.max_lag:
            replica._set(False, f"replay lag {replica.lag:.1f}s > max_replica_lag {self.max_lag}s")
        else:
            if not in_recovery:
                logger.debug("replica %s is not in recovery (promoted?)", replica.name)
            replica._set(True, None)

    async def check_all(self) -> None:
        """Check every replica concurrently."""
        await asyncio.gather(*(self.check(r) for r in self.replicas))

    def start(self) -> None:
        """Start the background checks (idempotent; needs a running loop)."""
        if self._task is None and self.replicas:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name="freightscale-replica-checks", context=contextvars.Context()
            )

    async def _loop(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self.check_interval)

    async def aclose(self) -> None:
        """Stop the background checks."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
