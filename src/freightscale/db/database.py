"""``Database``: the engines, the replica set, sessions and read-your-writes markers.

One instance per process, shared by the middleware, the FastAPI dependency
and the app's own code::

    db = Database(settings.database, store=redis_store)
    async with db.lifespan():          # starts replica checks, disposes pools
        async with db.session() as session:
            ...

Read-your-writes across requests: when a request commits a write, a marker
keyed by its client (the principal's user, else the session id) is stored
for ``read_your_writes_window`` seconds; while it lives, that client's
requests read from the primary. Keep the store in Redis when several
instances serve the same clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
from collections.abc import AsyncIterator, Callable

from opentelemetry.metrics import MeterProvider
from sqlalchemy.ext.asyncio import async_sessionmaker

from freightscale.context import get_principal, scope_state
from freightscale.db.budget import warn_if_over_budget
from freightscale.db.engines import Engines, create_engines
from freightscale.db.errors import OutageLog
from freightscale.db.replicas import ReplicaSet
from freightscale.db.routing import RoutingAsyncSession, RoutingState
from freightscale.settings.database import DatabaseSettings
from freightscale.stores import MemoryStore, Store
from freightscale.types import Scope

__all__ = ["ClientKey", "Database", "default_client_key"]

logger = logging.getLogger("freightscale.db")

ClientKey = Callable[[Scope], "str | None"]


def default_client_key(scope: Scope) -> str | None:
    """Who the read-your-writes marker belongs to: user, else session, else nobody.

    The principal authentication put in the request context wins (tenant and
    user id); else the session id the session middleware records under
    ``scope["freightscale"]["session_id"]``. An anonymous client without a
    session gets no marker: nothing it sends can pick another client's key.
    """
    principal = get_principal(scope) or get_principal()
    if principal is not None:
        raw = f"u\x00{principal.tenant_id or ''}\x00{principal.user_id}"
    else:
        session_id = scope_state(scope).get("session_id")
        if not isinstance(session_id, str) or not session_id:
            return None
        raw = f"s\x00{session_id}"
    # Hashed: bounded key length whatever the ids look like.
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


class Database:
    """The database layer's live objects for one process.

    Args:
        settings: the ``database`` settings section.
        engines: prebuilt engines (default: :func:`create_engines` of ``settings``).
        store: where read-your-writes markers live (default: a bounded
            in-process memory store, which holds for one process only).
        client_key: maps a request scope to its marker key (None: no marker).
        meter_provider: OpenTelemetry meter provider (default: the global one).
    """

    def __init__(
        self,
        settings: DatabaseSettings | None = None,
        *,
        engines: Engines | None = None,
        store: Store | None = None,
        client_key: ClientKey = default_client_key,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.settings = settings if settings is not None else DatabaseSettings()
        if engines is None:
            engines = create_engines(self.settings, meter_provider=meter_provider)
        self.engines = engines
        self.metrics = engines.metrics
        self.replicas = ReplicaSet(
            self.engines.replicas,
            max_lag=self.settings.max_replica_lag,
            check_interval=self.settings.replica_check_interval,
            check_timeout=self.settings.replica_check_timeout,
            db_metrics=self.metrics,
        )
        root = store if store is not None else MemoryStore(max_entries=100_000)
        self.store = root.with_namespace("db-ryw")
        self.client_key = client_key
        self.outage = OutageLog("primary", self.metrics)
        self._store_down = False
        self._recheck: asyncio.Task[None] | None = None
        self.sessionmaker = async_sessionmaker(
            bind=self.engines.primary,
            class_=RoutingAsyncSession,
            expire_on_commit=False,
        )

    def __repr__(self) -> str:
        return (
            f"Database(primary={self.engines.primary.url!r}, "
            f"replicas={[r.name for r in self.replicas.replicas]})"
        )

    def session(self, state: RoutingState | None = None) -> RoutingAsyncSession:
        """A new routing session (the caller closes it; ``async with`` does)."""
        return self.sessionmaker(
            replicas=self.replicas if len(self.replicas) else None,
            state=state if state is not None else RoutingState(),
        )

    @property
    def uses_markers(self) -> bool:
        """True when cross-request read-your-writes applies (replicas and a window)."""
        return bool(len(self.replicas)) and self.settings.read_your_writes_window > 0

    def start(self) -> None:
        """Start background replica checks (idempotent; needs a running loop)."""
        self.replicas.start()

    async def aclose(self) -> None:
        """Stop the checks and close every pooled connection."""
        await self.replicas.aclose()
        if self._recheck is not None:
            self._recheck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recheck
            self._recheck = None
        await self.engines.dispose()

    @contextlib.asynccontextmanager
    async def lifespan(self, *, check_budget: bool = True) -> AsyncIterator[None]:
        """Run the replica checks for the block's duration, then close the pools.

        With ``check_budget``, the connection-budget check runs in the
        background (start-up does not wait for the servers) and logs one
        warning per problem (:func:`~freightscale.db.budget.warn_if_over_budget`).
        """
        self.start()
        budget: asyncio.Task[object] | None = None
        if check_budget:
            budget = asyncio.get_running_loop().create_task(
                warn_if_over_budget(self.settings), context=contextvars.Context()
            )
        try:
            yield  # no state: usable as Starlette's ``lifespan=lambda app: db.lifespan()``
        finally:
            if budget is not None and not budget.done():
                budget.cancel()
            if budget is not None:
                await asyncio.gather(budget, return_exceptions=True)
            await self.aclose()

    def recheck_replicas_soon(self) -> None:
        """Check the replicas now, in the background (after a connection error)."""
        if not len(self.replicas) or (self._recheck is not None and not self._recheck.done()):
            return
        # A fresh context: the task must not keep the request's principal alive.
        self._recheck = asyncio.get_running_loop().create_task(
            self.replicas.check_all(), context=contextvars.Context()
        )

    async def load_marker(self, scope: Scope, state: RoutingState) -> None:
        """Make ``state`` sticky when the request's client wrote recently."""
        if not self.uses_markers:
            return
        key = self.client_key(scope)
        if key is None:
            return
        try:
            async with asyncio.timeout(self.settings.marker_timeout):
                if await self.store.exists(key):
                    state.sticky = True
        except Exception as exc:
            # Unknown: read from the primary, which is always consistent.
            state.sticky = True
            self._store_failed(exc)
        else:
            self._store_ok()

    async def save_marker(self, scope: Scope, state: RoutingState) -> None:
        """Record that the request's client committed a write (if it did)."""
        if not (state.committed_write and self.uses_markers):
            return
        key = self.client_key(scope)
        if key is None:
            return
        try:
            async with asyncio.timeout(self.settings.marker_timeout):
                await self.store.set(key, b"1", expires_in=self.settings.read_your_writes_window)
        except Exception as exc:
            self._store_failed(exc)
        else:
            self._store_ok()

    def _store_failed(self, exc: BaseException) -> None:
        self.metrics.record_store_error()
        if not self._store_down:
            self._store_down = True
            logger.warning(
                "read-your-writes store failed (%s: %s); reads go to the primary while it is down",
                type(exc).__name__,
                str(exc)[:200],
            )

    def _store_ok(self) -> None:
        if self._store_down:
            self._store_down = False
            logger.warning("read-your-writes store recovered")
