"""Redis store: single node, Sentinel and Cluster through one client.

Keys are ``<prefix>:<namespace>:<key>``. Every operation is one command or
one MULTI pipeline on one key, so it is atomic on the server and works on a
Cluster without cross-slot errors. Driver errors are translated to
:class:`~freightscale.exceptions.StoreError` in :meth:`RedisStore._call`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import SecretStr
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from freightscale.backends.redis import (
    RedisClient,
    create_redis_client,
    ensure_ready,
    ping,
    translate_redis_error,
)
from freightscale.exceptions import StoreError
from freightscale.settings.redis import RedisSettings
from freightscale.stores.base import Store, join_namespace, store_bytes

__all__ = ["RedisStore"]

T = TypeVar("T")

# SET NX PX + INCRBY as one server-side step: atomic like MULTI/EXEC, one round
# trip, and safe on a Cluster, where redis-py's asyncio *transaction* pipeline runs
# every queued command in a new thread with its own event loop and joins it —
# blocking the caller's loop (found by the blockbuster guard).
_INCR_WITH_EXPIRY = """
redis.call('SET', KEYS[1], 0, 'NX', 'PX', ARGV[2])
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


class RedisStore:
    """A :class:`~freightscale.stores.Store` on Redis.

    Args:
        client: a client from :func:`~freightscale.backends.redis.create_redis_client`
            (or any ``redis.asyncio`` client with ``decode_responses=False``).
        key_prefix: prefix of every key, so apps can share a Redis.
        namespace: the namespace of this view.
        check_timeout: seconds :meth:`check` waits for PING.
        owns_client: close the client in :meth:`aclose`.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        key_prefix: str = "fs",
        namespace: str = "",
        check_timeout: float = 2.0,
        owns_client: bool = False,
        _ready: list[bool] | None = None,
    ) -> None:
        self.client = client
        # Shared by every view of one client: [True] once the client is ready.
        self._ready = _ready if _ready is not None else [not isinstance(client, RedisCluster)]
        self.namespace = namespace
        self.key_prefix = key_prefix
        self._check_timeout = check_timeout
        self._owns_client = owns_client
        self._prefix = f"{key_prefix}:{namespace}:" if namespace else f"{key_prefix}:"
        self._incr_with_expiry = client.register_script(_INCR_WITH_EXPIRY)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """Create a store (and its own client) from a Redis URL.

        ``options`` may hold :class:`~freightscale.settings.RedisSettings`
        fields (``max_connections``, ``socket_timeout``, ``key_prefix``…).
        """
        settings = RedisSettings(url=SecretStr(url), **options)
        client = create_redis_client(settings)
        return cls(
            client,
            key_prefix=settings.key_prefix,
            check_timeout=settings.socket_timeout,
            owns_client=True,
        )

    def __repr__(self) -> str:
        return f"RedisStore(namespace={self.namespace!r}, prefix={self.key_prefix!r})"

    def full_key(self, key: str) -> str:
        """Return the Redis key that holds ``key`` in this namespace."""
        return self._prefix + key

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            if not self._ready[0]:
                await ensure_ready(self.client)
                self._ready[0] = True
            return await operation()
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_redis_error(exc) from exc

    async def get(self, key: str) -> bytes | None:
        """Return the value under ``key``, or None."""
        value: bytes | str | None = await self._call(lambda: self.client.get(self.full_key(key)))
        # The client never decodes (decode_responses=False), so values are bytes.
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes, *, expires_in: float | None = None) -> None:
        """Store ``value`` under ``key`` (``SET … PX``)."""
        value = store_bytes(value)
        if expires_in is not None and expires_in <= 0:
            await self.delete(key)
            return
        px = None if expires_in is None else max(1, int(expires_in * 1000))
        await self._call(lambda: self.client.set(self.full_key(key), value, px=px))

    async def delete(self, key: str) -> bool:
        """Remove ``key``; return True if it existed."""
        removed: int = await self._call(lambda: self.client.delete(self.full_key(key)))
        return removed > 0

    async def exists(self, key: str) -> bool:
        """Return True if ``key`` exists."""
        found: int = await self._call(lambda: self.client.exists(self.full_key(key)))
        return found > 0

    async def expires_in(self, key: str) -> float | None:
        """Seconds until ``key`` expires (``PTTL``), or None."""
        ms: int = await self._call(lambda: self.client.pttl(self.full_key(key)))
        return None if ms < 0 else ms / 1000

    async def incr(self, key: str, amount: int = 1, *, expires_in: float | None = None) -> int:
        """Atomically add ``amount``; ``expires_in`` applies only when the key is created.

        One round trip: ``INCRBY``, or with ``expires_in`` a Lua script doing
        ``SET key 0 NX PX ttl`` then ``INCRBY key n`` atomically.
        """
        full = self.full_key(key)
        if expires_in is None:
            try:
                value: int = await self._call(lambda: self.client.incrby(full, amount))
            except StoreError as exc:
                raise _not_an_integer(key, exc) from exc
            return value

        px = max(1, int(expires_in * 1000))

        async def run() -> int:
            result = await self._incr_with_expiry(keys=[full], args=[amount, px])
            return int(result)

        try:
            return await self._call(run)
        except StoreError as exc:
            raise _not_an_integer(key, exc) from exc

    async def delete_all(self) -> None:
        """Delete every key under this namespace (``SCAN`` + ``UNLINK``, every primary)."""
        pattern = _glob_escape(self._prefix) + "*"

        async def run() -> None:
            if isinstance(self.client, RedisCluster):
                # Keys of one namespace spread over slots: delete node by node.
                for node in self.client.get_primaries():
                    batch: list[bytes] = []
                    async for key in self.client.scan_iter(
                        match=pattern, count=500, target_nodes=node
                    ):
                        batch.append(key)
                    for key in batch:
                        await self.client.unlink(key)
                return
            batch = []
            async for key in self.client.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    await self.client.unlink(*batch)
                    batch = []
            if batch:
                await self.client.unlink(*batch)

        await self._call(run)

    async def check(self) -> None:
        """PING Redis; raise StoreUnavailableError if it does not answer in time."""
        await ping(self.client, self._check_timeout)

    async def aclose(self) -> None:
        """Close the client if this store created it."""
        if self._owns_client:
            await self.client.aclose()

    def with_namespace(self, namespace: str) -> Store:
        """Return a view under ``namespace`` sharing this store's client."""
        return RedisStore(
            self.client,
            key_prefix=self.key_prefix,
            namespace=join_namespace(self.namespace, namespace),
            check_timeout=self._check_timeout,
            owns_client=False,
            _ready=self._ready,
        )


def _not_an_integer(key: str, exc: StoreError) -> Exception:
    # Same contract as the other stores: a non-integer value is a ValueError.
    if isinstance(exc.__cause__, ResponseError) and "not an integer" in str(exc.__cause__):
        return ValueError(f"value under {key!r} is not an integer")
    return exc


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
