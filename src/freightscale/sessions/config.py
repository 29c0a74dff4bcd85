"""Build a session backend from settings (drivers imported only when used)."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import SecretStr

from freightscale.exceptions import ConfigurationError, MissingDependencyError
from freightscale.sessions.backends import MemorySessionBackend, SessionBackend
from freightscale.settings.redis import REDIS_SCHEMES, RedisSettings
from freightscale.settings.sessions import SessionSettings

if TYPE_CHECKING:
    from freightscale.backends.redis import RedisClient

__all__ = ["backend_from_settings", "backend_from_url"]


def backend_from_url(
    url: str,
    settings: SessionSettings | None = None,
    *,
    redis_settings: RedisSettings | None = None,
    clock: Callable[[], float] = time.time,
) -> SessionBackend:
    """Return the session backend for ``url`` (``memory://``, ``redis…://``, ``postgresql…://``).

    Creating it opens no connection: the first request does.

    Raises:
        ConfigurationError: for an unknown scheme.
        MissingDependencyError: for PostgreSQL without asyncpg.
    """
    settings = settings or SessionSettings()
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not url or scheme == "memory":
        return MemorySessionBackend(clock=clock)
    if scheme in REDIS_SCHEMES:
        from freightscale.backends.redis import create_redis_client
        from freightscale.sessions.redis import RedisSessionBackend

        base = redis_settings or RedisSettings()
        redis = base.model_copy(update={"url": SecretStr(url)})
        return RedisSessionBackend(
            create_redis_client(redis), key_prefix=redis.key_prefix, owns_client=True, clock=clock
        )
    if scheme in ("postgresql", "postgresql+asyncpg"):
        if importlib.util.find_spec("asyncpg") is None:
            raise MissingDependencyError(
                "asyncpg", extra="postgres", feature="the PostgreSQL session store"
            )
        from freightscale.sessions.postgres import PostgresSessionBackend

        return PostgresSessionBackend.from_url(
            url,
            table_name=settings.table_name,
            timeout=settings.timeout,
            cleanup_interval=settings.cleanup_interval,
            cleanup_batch_size=settings.cleanup_batch_size,
            clock=clock,
        )
    raise ConfigurationError(
        f"FREIGHTSCALE_SESSIONS__STORE_URL: scheme {scheme or url[:30]!r} is not memory, "
        "redis, rediss, redis+sentinel, redis+cluster, postgresql or postgresql+asyncpg"
    )


def backend_from_settings(
    settings: SessionSettings,
    *,
    redis_client: RedisClient | None = None,
    redis_settings: RedisSettings | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[SessionBackend, bool]:
    """Return ``(backend, owned)`` for the settings.

    ``store_url`` wins; else a shared ``redis_client`` (not owned); else the
    shared Redis settings if they name a URL; else memory.
    """
    url = settings.store_url.get_secret_value()
    if url:
        return backend_from_url(url, settings, redis_settings=redis_settings, clock=clock), True
    if redis_client is not None:
        from freightscale.sessions.redis import RedisSessionBackend

        prefix = redis_settings.key_prefix if redis_settings else "fs"
        return RedisSessionBackend(redis_client, key_prefix=prefix, clock=clock), False
    if redis_settings is not None and redis_settings.enabled:
        url = redis_settings.url.get_secret_value()
        return backend_from_url(url, settings, redis_settings=redis_settings, clock=clock), True
    return MemorySessionBackend(clock=clock), True
