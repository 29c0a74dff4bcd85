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

Replica health lives in :mod:`freightscale.db.replicas`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import GenerativeSelect

from freightscale.db.replicas import ReplicaSet

__all__ = [
    "RoutingAsyncSession",
    "RoutingSession",
    "RoutingState",
    "is_write",
    "primary",
]

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
