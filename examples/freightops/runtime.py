"""The app's shared resources, opened once per process at startup.

:class:`Services` holds the database engines, the shared key/value store
(Redis when ``FREIGHTSCALE_REDIS__URL`` is set, else in-process memory), the
naive profile's session files and the token secret. Feature modules reach it with
``services(request)``.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from starlette.requests import HTTPConnection

from examples.freightops.config import AppConfig
from examples.freightops.naive import FileSessionStore
from examples.freightops.standins import SessionBackend
from freightscale.auth import Authenticator, TokenIssuer
from freightscale.caching import CacheBackend
from freightscale.db import Database, create_engines
from freightscale.db.replicas import ReplicaSet
from freightscale.settings import FreightScaleSettings
from freightscale.stores import MemoryStore, Store

__all__ = ["Services", "services"]

logger = logging.getLogger("freightops")


@dataclass
class Services:
    """Everything a request handler needs besides the request."""

    config: AppConfig
    settings: FreightScaleSettings
    secret: str
    engine: AsyncEngine
    read_engine: AsyncEngine
    store: Store
    root_store: Store
    sessions: SessionBackend | None
    """The naive profile's session files (the freightscale profile uses freightscale.sessions)."""
    response_cache: CacheBackend | None = None
    """freightscale's response cache, for invalidation from write handlers."""
    auth: Authenticator | None = None
    """freightscale's authenticator (revocations, RBAC cache); None in the naive profile."""
    issuer: TokenIssuer | None = None
    """Signs access tokens at login; None in the naive profile."""
    replicas: ReplicaSet | None = None
    """The stack's health-checked replicas (reads rotate over the healthy ones)."""
    extras: dict[str, Any] = field(default_factory=dict)
    _autocommit: dict[AsyncEngine, AsyncEngine] = field(default_factory=dict, repr=False)

    @property
    def is_sqlite(self) -> bool:
        """True on the embedded SQLite database."""
        return self.engine.dialect.name == "sqlite"

    def reader(self) -> AsyncConnection:
        """A connection for reads (a healthy replica when there is one)."""
        return self.choose_read_engine().connect()

    def choose_read_engine(self) -> AsyncEngine:
        """The engine for the next read: the stack's healthy replicas in turn, else
        :attr:`read_engine` (the primary when no replica is in rotation)."""
        if self.replicas is not None:
            chosen = self.replicas.choose()
            if chosen is not None:
                reading = self._autocommit.get(chosen)
                if reading is None:
                    reading = self._autocommit[chosen] = _for_reads(chosen)
                return reading
        return self.read_engine

    def writer(self) -> Any:
        """A transaction on the primary (``async with services.writer() as conn``)."""
        return self.engine.begin()

    def autocommit(self) -> AsyncConnection:
        """A connection on the primary whose every statement commits by itself.

        For a write that is one statement (``INSERT … SELECT … RETURNING``):
        no BEGIN / COMMIT round trips around it.
        """
        return self.engine.execution_options(isolation_level="AUTOCOMMIT").connect()

    def adopt_database(self, database: Database) -> None:
        """Use the stack's database layer (its pools and replica checks) instead of our own.

        Called before any request, so the replaced engines never opened a
        connection. Reads rotate over the replicas its health checks keep in
        rotation and fall back to the primary when none is (a replica that is
        down or lagging is never read from).
        """
        self.engine = database.engines.primary
        self.read_engine = _for_reads(self.engine)
        self.replicas = database.replicas if len(database.replicas) else None

    @classmethod
    def open(cls, settings: FreightScaleSettings, config: AppConfig) -> Services:
        """Create the engines and the store (no connection is opened yet)."""
        secret = settings.auth.secret.get_secret_value()
        if not secret:
            # One process only: tokens die with it. Production sets the secret.
            secret = secrets.token_urlsafe(32)
            logger.warning(
                "FREIGHTSCALE_AUTH__SECRET is not set: using a random per-process token secret "
                "(fine for the embedded demo; set it when running several workers)"
            )
        replicas = [u.get_secret_value() for u in settings.database.replica_urls]
        if config.naive:
            engine = _naive_engine(settings.database.effective_url, settings, config)
            read_engine = _naive_engine(replicas[0], settings, config) if replicas else engine
        else:
            # freightscale.db: bounded, instrumented pools sized by FREIGHTSCALE_DATABASE__*.
            # (With the stack's database layer on, adopt_database() replaces these with
            # its pools and health-checked replica rotation.)
            engines = create_engines(settings.database)
            engine = engines.primary
            read_engine = engines.replicas[0] if engines.replicas else engine
        read_engine = _for_reads(read_engine)
        root_store = _store(settings)
        store = root_store.with_namespace("freightops")
        sessions: SessionBackend | None = None
        if config.naive:
            sessions = FileSessionStore(config.session_dir)
        return cls(config, settings, secret, engine, read_engine, store, root_store, sessions)

    async def aclose(self) -> None:
        """Dispose of the engines and close the store."""
        await self.engine.dispose()
        await self.read_engine.dispose()
        await self.root_store.aclose()


def _for_reads(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` for reads: in autocommit on PostgreSQL, so no BEGIN / ROLLBACK round
    trips around each request's SELECTs (same pool, only the option differs)."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


def _naive_engine(url: str, settings: FreightScaleSettings, config: AppConfig) -> AsyncEngine:
    """The legacy design's engine: one pool that grows without bound under load."""
    db = settings.database
    if url.startswith("sqlite"):
        return create_async_engine(url, connect_args={"timeout": db.connect_timeout})
    return create_async_engine(
        url,
        pool_size=config.naive_pool_size,
        max_overflow=-1,
        connect_args={
            "server_settings": {"application_name": db.application_name},
            "timeout": db.connect_timeout,
        },
    )


def _store(settings: FreightScaleSettings) -> Store:
    """The root store: Redis when configured, else in-process memory (one process only)."""
    if not settings.redis.enabled:
        return MemoryStore()
    from freightscale.backends.redis import create_redis_client
    from freightscale.stores.redis import RedisStore

    return RedisStore(
        create_redis_client(settings.redis),
        key_prefix=settings.redis.key_prefix,
        check_timeout=settings.redis.socket_timeout,
        owns_client=True,
    )


def services(conn: HTTPConnection) -> Services:
    """The :class:`Services` of the app serving ``conn``."""
    found: Services = conn.app.state.services
    return found
