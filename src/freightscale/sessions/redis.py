"""Redis session backend: one GET per load, one Lua compare-and-set per write.

Keys are ``<key_prefix>:session:<id>``; each operation touches one key, so it
works unchanged on Redis Cluster. Values are JSON records whose expiry is
also the key's TTL (``SET … PX``), so Redis expires sessions by itself.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from importlib.resources import files
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from freightscale.backends.redis import RedisClient, ensure_ready, ping, translate_redis_error
from freightscale.exceptions import StoreUnavailableError
from freightscale.sessions.backends import (
    CasResult,
    SessionData,
    SessionRecord,
    decode_record,
    encode_record,
    import_concurrently,
)

__all__ = ["RedisSessionBackend"]

T = TypeVar("T")

_CAS_SCRIPT = files("freightscale.sessions").joinpath("lua/cas.lua").read_text()


class RedisSessionBackend:
    """Sessions in Redis (single node, Sentinel or Cluster).

    Args:
        client: a client from :func:`~freightscale.backends.redis.create_redis_client`,
            or a function returning it, resolved on first use (so a middleware
            can be built before a shared client opens at startup).
        key_prefix: prefix of every key (the Redis settings' ``key_prefix``).
        owns_client: close the client in :meth:`aclose`.
        clock: wall clock in Unix seconds.
    """

    def __init__(
        self,
        client: RedisClient | Callable[[], RedisClient | None],
        *,
        key_prefix: str = "fs",
        owns_client: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = client
        self._client: RedisClient | None = None
        self._prefix = f"{key_prefix}:session:"
        self._owns_client = owns_client
        self._clock = clock
        self._ready = False
        if isinstance(client, aioredis.Redis | RedisCluster):
            self._bind(client)

    def _bind(self, client: RedisClient) -> None:
        self._client = client
        self._ready = not isinstance(client, RedisCluster)
        self._cas: AsyncScript = client.register_script(_CAS_SCRIPT)

    @property
    def client(self) -> RedisClient:
        """The Redis client (resolved from the provider on first use).

        Raises:
            StoreUnavailableError: when the provider has no client (yet).
        """
        if self._client is None:
            assert callable(self._source)
            client = self._source()
            if client is None:
                raise StoreUnavailableError("the shared Redis client is not open (yet)")
            self._bind(client)
            assert self._client is not None
        return self._client

    def __repr__(self) -> str:
        return f"RedisSessionBackend(prefix={self._prefix!r})"

    def key(self, session_id: str) -> str:
        """Return the Redis key of ``session_id``."""
        return self._prefix + session_id

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        client = self.client
        try:
            if not self._ready:
                # A Cluster client must finish discovery before concurrent use.
                await ensure_ready(client)
                self._ready = True
            return await operation()
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_redis_error(exc) from exc

    async def load(self, session_id: str) -> SessionRecord | None:
        """One ``GET``."""
        client = self._client
        raw: bytes | str | None
        if client is not None and self._ready:
            # The read every session request makes: no wrapper, no closure.
            try:
                raw = await client.get(self._prefix + session_id)
            except (RedisError, OSError, TimeoutError) as exc:
                raise translate_redis_error(exc) from exc
        else:
            raw = await self._call(lambda: self.client.get(self.key(session_id)))
        if raw is None:
            return None
        record = decode_record(raw)
        return record if record.data is not None else None

    async def compare_and_set(
        self, session_id: str, data: SessionData | None, expires_at: float, *, version: int
    ) -> CasResult:
        """One ``EVALSHA`` of the CAS script."""
        ttl_ms = int((expires_at - self._clock()) * 1000)
        if ttl_ms <= 0:
            # Already expired: deleting is the only faithful "write".
            await self.delete(session_id)
            return CasResult(True, None)
        value = encode_record(data, version + 1, expires_at)
        reply: Any = await self._call(
            lambda: self._cas(keys=[self.key(session_id)], args=[version, value, ttl_ms])
        )
        if reply == 1:
            return CasResult(True, SessionRecord(data, version + 1, expires_at))
        return CasResult(False, decode_record(reply) if reply is not None else None)

    async def delete(self, session_id: str) -> None:
        """``UNLINK`` the key."""
        await self._call(lambda: self.client.unlink(self.key(session_id)))

    async def import_many(self, items: Sequence[tuple[str, SessionData, float]]) -> list[bool]:
        """Create-if-absent each item: one pipelined round trip per call on a
        single node; 64 writes in flight on a Cluster (keys spread over slots)."""
        if isinstance(self.client, RedisCluster):
            return await import_concurrently(self, items)
        now = self._clock()
        live = [(sid, data, exp) for sid, data, exp in items if exp > now]

        async def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for sid, data, exp in live:
                value = encode_record(data, 1, exp)
                ttl_ms = max(1, int((exp - now) * 1000))
                # redis-py queues a script call on a pipeline (EVALSHA, SCRIPT LOAD on NOSCRIPT).
                await self._cas(
                    keys=[self.key(sid)],
                    args=[0, value, ttl_ms],
                    client=pipe,  # type: ignore[arg-type]
                )
            return list(await pipe.execute())

        replies = iter(await self._call(run) if live else [])
        return [exp > now and next(replies) == 1 for _, _, exp in items]

    async def check(self) -> None:
        """PING Redis."""
        await ping(self.client)

    async def aclose(self) -> None:
        """Close the client if this backend created it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
