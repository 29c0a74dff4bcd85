"""Key/value stores shared by sessions, caches, revocation and rate limits.

``store_from_url()`` picks an implementation by URL scheme and imports its
driver only when that scheme is used::

    memory://                        MemoryStore
    redis:// rediss:// redis+sentinel:// redis+cluster://   RedisStore
    postgresql:// postgresql+asyncpg://                     PostgresStore
"""

from __future__ import annotations

from typing import Any

from freightscale.exceptions import ConfigurationError
from freightscale.stores.base import Store
from freightscale.stores.memory import MemoryStore
from freightscale.stores.postgres import PostgresStore
from freightscale.stores.redis import RedisStore

__all__ = ["MemoryStore", "PostgresStore", "RedisStore", "Store", "store_from_url"]

_SCHEMES = {
    "memory": "memory",
    "redis": "redis",
    "rediss": "redis",
    "redis+sentinel": "redis",
    "redis+cluster": "redis",
    "postgresql": "postgres",
    "postgresql+asyncpg": "postgres",
}


def store_from_url(url: str, **options: Any) -> Store:
    """Return a store for ``url``; ``options`` go to the store's constructor.

    An empty URL or ``memory://`` gives a :class:`MemoryStore`.

    Raises:
        ConfigurationError: for an unknown scheme.
        MissingDependencyError: when the scheme's driver is not installed.
    """
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not url or scheme == "memory":
        return MemoryStore(**options)
    kind = _SCHEMES.get(scheme)
    if kind == "redis":
        return RedisStore.from_url(url, **options)
    if kind == "postgres":
        store: Store = PostgresStore.from_url(url, **options)
        return store
    raise ConfigurationError(
        f"store URL scheme {scheme or url[:30]!r} is not one of {', '.join(sorted(_SCHEMES))}"
    )
