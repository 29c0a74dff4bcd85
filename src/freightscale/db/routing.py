"""Read/write routing: a session that picks the primary or a healthy replica.

The decision is made per statement in :meth:`RoutingSession.get_bind`:

1. writes (flushes, INSERT / UPDATE / DELETE, DDL, ``SELECT ... FOR UPDATE``,
   raw SQL that is not a plain SELECT, ``session.connection()``) go to the
   primary and make the rest of the request *sticky*: every later read of it
   goes to the primary too, so a request always reads its own writes;
2. inside :func:`primary` every statement goes to the primary;
3. a request whose client wrote within ``read_your_writes_window`` starts
   sticky (the cross-request marker, see :mod:`freightscale.db.database`);
4. any other read goes to the next healthy replica, round robin, or to the
   primary when none is healthy.

:class:`ReplicaSet` keeps replicas healthy: a background task checks each one
every ``replica_check_interval`` seconds (it answers, it is in recovery, its
replay lag is under ``max_replica_lag``); a replica that fails is out of
rotation until a later check passes. A connection error on a replica takes
it out at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import GenerativeSelect

from freightscale.db.engines import engine_label
from freightscale.db.metrics import DbMetrics

__all__ = [
    "Replica",
    "ReplicaSet",
    "RoutingAsyncSession",
    "RoutingSession",
    "RoutingState",
    "is_write",
    "primary",
]

logger = logging.getLogger("freightscale.db")

_force_primary: ContextVar[bool] = ContextVar("freightscale_db_force_primary", default=False)


@contextlib.contextmanager
def primary() -> Iterator[None]:
    """Send every statement in the block to the primary, reads included.

    For reads that must see the latest data (a balance before a transfer)
    or calls whose side effects the router cannot see (``SELECT nextval(...)``)::

        with primary():
            row = await session.scalar(select(Account).where(...))
    """
    token = _force_primary.set(True)
    try:
        yield
    finally:
        _force_primary.reset(token)


@dataclass(slots=True)
class RoutingState:
    """What the router knows about one request (or one stand-alone session).

    Attributes:
        sticky: reads go to the primary (the request wrote, or its client
            wrote within the read-your-writes window).
        tx_wrote: a write was routed in the current transaction.
        committed_write: a transaction that wrote was committed (so the
            client's next requests should read from the primary).
        used: the database was touched at all.
    """

    sticky: bool = False
    tx_wrote: bool = False
    committed_write: bool = False
    used: bool = False


_PLAIN_READ = re.compile(
    r"^\s*(?:/\*.*?\*/\s*|--[^\n]*\n\s*)*(?:select|values|table|show)\b", re.I | re.S
)
_NOT_A_PLAIN_READ = re.compile(
    r"\bfor\s+(?:update|no\s+key\s+update|share|key\s+share)\b|\binto\b"
    r"|\b(?:nextval|setval|set_config|pg_advisory\w*|pg_notify|txid_current|lo_\w+)\s*\(",
    re.I,
)


def is_write(clause: Any) -> bool:
    """True when ``clause`` must run on the primary.

    Unknown statement kinds count as writes: a read sent to the primary
    costs a little load, a write sent to a replica is an error.
    """
    if clause is None:
        return True
    if isinstance(clause, GenerativeSelect):
        return getattr(clause, "_for_update_arg", None) is not None
    if isinstance(clause, UpdateBase):
        return True
    if isinstance(clause, TextClause):
        sql = clause.text
        return not _PLAIN_READ.match(sql) or bool(_NOT_A_PLAIN_READ.search(sql))
    return True


class RoutingSession(Session):
    """A SQLAlchemy ``Session`` that routes each statement (see the module doc).

    Args:
        replicas: the replica set; None routes everything to the primary.
        state: the request's routing state (shared by its sessions).
        **kwargs: the usual ``Session`` arguments; ``bind`` is the primary.
    """

    def __init__(
        self,
        *,
        replicas: ReplicaSet | None = None,
        state: RoutingState | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.replica_set = replicas
        self.routing = state if state is not None else RoutingState()

    def get_bind(
        self,
        mapper: Any = None,
        clause: Any = None,
        bind: Any = None,
        **kwargs: Any,
    ) -> Engine | Connection:
        """Return the engine for this statement: the primary or a replica."""
        state = self.routing
        state.used = True
        primary_engine = super().get_bind(mapper, clause=clause, bind=bind, **kwargs)
        if bind is not None:
            return primary_engine
        if self._flushing or is_write(clause):
            state.tx_wrote = True
            state.sticky = True
            return primary_engine
        if state.sticky or _force_primary.get() or self.replica_set is None:
            return primary_engine
        replica = self.replica_set.choose()
        return replica.sync_engine if replica is not None else primary_engine


@event.listens_for(RoutingSession, "after_commit")
def _after_commit(session: Session) -> None:
    if isinstance(session, RoutingSession) and session.routing.tx_wrote:
        session.routing.committed_write = True
        session.routing.tx_wrote = False


@event.listens_for(RoutingSession, "after_rollback")
def _after_rollback(session: Session) -> None:
    if isinstance(session, RoutingSession):
        session.routing.tx_wrote = False


class RoutingAsyncSession(AsyncSession):
    """The ``AsyncSession`` whose sync session is a :class:`RoutingSession`."""

    sync_session_class = RoutingSession

    @property
    def routing(self) -> RoutingState:
        """The routing state of this session's request."""
        sync = self.sync_session
        assert isinstance(sync, RoutingSession)
        return sync.routing


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
