"""The database layer: pooled engines, read/write routing, request sessions, budget.

::

    from freightscale.db import Database, DatabaseSessionMiddleware, get_session, primary

    db = Database(settings.database, store=redis_store)
    app = DatabaseSessionMiddleware(app, database=db)

    async def handler(request):
        session = get_session(request)          # committed / rolled back / closed for you
        rows = await session.execute(select(Shipment))   # a healthy replica
        session.add(Shipment(...))                        # primary; later reads too

See ``docs/database.md`` for pool sizing, PgBouncer, routing and metrics.
"""

from __future__ import annotations

from freightscale.db.budget import BudgetReport, ServerBudget, check_budget, warn_if_over_budget
from freightscale.db.database import Database, default_client_key
from freightscale.db.engines import Engines, InstrumentedPool, create_engines, engine_options
from freightscale.db.errors import DatabaseUnavailableError, is_unavailable, unavailable_response
from freightscale.db.middleware import DatabaseSessionMiddleware, close_session, get_session
from freightscale.db.replicas import Replica, ReplicaSet
from freightscale.db.routing import (
    RoutingAsyncSession,
    RoutingSession,
    RoutingState,
    is_write,
    primary,
)

__all__ = [
    "BudgetReport",
    "Database",
    "DatabaseSessionMiddleware",
    "DatabaseUnavailableError",
    "Engines",
    "InstrumentedPool",
    "Replica",
    "ReplicaSet",
    "RoutingAsyncSession",
    "RoutingSession",
    "RoutingState",
    "ServerBudget",
    "check_budget",
    "close_session",
    "create_engines",
    "default_client_key",
    "engine_options",
    "get_session",
    "is_unavailable",
    "is_write",
    "primary",
    "unavailable_response",
    "warn_if_over_budget",
]
