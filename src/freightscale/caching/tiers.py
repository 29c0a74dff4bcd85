"""Redis-side helpers of the cache: tag index, fill lock and L1 coherence.

Only used when the cache's store is a :class:`~freightscale.stores.redis.RedisStore`;
every command is single-key (or a non-transactional pipeline of single-key
commands), so a Redis Cluster works as well as one node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from freightscale.backends.redis import ensure_ready
from freightscale.stores.redis import RedisStore

__all__ = ["RedisCacheOps", "tag_key"]

logger = logging.getLogger("freightscale.caching")

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def tag_key(tag: str) -> str:
    """Store key of a tag's key set (hashed: tags come from handlers, keep keys bounded)."""
    return "t:" + hashlib.blake2b(tag.encode(), digest_size=16).hexdigest()


class RedisCacheOps:
    """Tag sets, ``SET NX PX`` fill locks and the pub/sub invalidation channel."""

    def __init__(self, store: RedisStore, *, tag_ttl: float, lock_ttl: float) -> None:
        self.store = store
        self.client = store.client
        self.tag_ttl_ms = max(1, int(tag_ttl * 1000))
        self.lock_ttl_ms = max(1, int(lock_ttl * 1000))
        self.channel = store.full_key("invalidate")
        self.origin = secrets.token_hex(8)
        self._release = self.client.register_script(_RELEASE)
        self._listener: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        self._ready = not isinstance(self.client, RedisCluster)

    async def ready(self) -> None:
        """Finish a Cluster client's discovery before its first command (see ``ensure_ready``)."""
        if not self._ready:
            await ensure_ready(self.client)
            self._ready = True

    async def add_tags(self, key: str, tags: Iterable[str]) -> None:
        """Record ``key`` under every tag (``SADD`` + ``PEXPIRE``, one pipeline)."""
        await self.ready()
        pipe = self.client.pipeline(transaction=False)
        for tag in tags:
            full = self.store.full_key(tag_key(tag))
            pipe.sadd(full, key)
            pipe.pexpire(full, self.tag_ttl_ms)
        await pipe.execute()

    async def pop_tagged(self, tags: Iterable[str]) -> set[str]:
        """Delete every entry under ``tags`` and the tag sets; return the entry keys."""
        await self.ready()
        keys: set[str] = set()
        for tag in tags:
            full = self.store.full_key(tag_key(tag))
            members = await self.client.smembers(full)
            keys.update(m.decode() if isinstance(m, bytes) else str(m) for m in members)
            await self.client.delete(full)
        if not keys:
            return keys
        full_keys = [self.store.full_key(key) for key in keys]
        if isinstance(self.client, RedisCluster):
            # A cluster pipeline cannot UNLINK (a multi-key command); keys
            # spread over slots, so delete them one by one, 50 at a time.
            for i in range(0, len(full_keys), 50):
                await asyncio.gather(*(self.client.unlink(k) for k in full_keys[i : i + 50]))
            return keys
        for i in range(0, len(full_keys), 500):
            await self.client.unlink(*full_keys[i : i + 500])
        return keys

    async def lock(self, key: str) -> str | None:
        """Try the fill lock of ``key``; return its token, or None if held elsewhere."""
        await self.ready()
        token = secrets.token_hex(8)
        ok = await self.client.set(
            self.store.full_key("l:" + key), token, nx=True, px=self.lock_ttl_ms
        )
        return token if ok else None

    async def unlock(self, key: str, token: str) -> None:
        """Release the lock if it is still ours (compare-and-delete in Lua)."""
        await self._release(keys=[self.store.full_key("l:" + key)], args=[token])

    async def publish(self, keys: Iterable[str]) -> None:
        """Tell the other instances to drop ``keys`` from their L1."""
        await self.ready()
        batch = list(keys)
        for i in range(0, len(batch), 500):
            payload = json.dumps({"o": self.origin, "k": batch[i : i + 500]})
            await self.client.publish(self.channel, payload)

    def start_listener(
        self, on_keys: Callable[[list[str]], None], on_gap: Callable[[], None]
    ) -> None:
        """Start the pub/sub listener task once (lazily, on first use)."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(on_keys, on_gap), name="freightscale-cache-invalidation"
            )

    async def _subscriber(self) -> aioredis.Redis:
        if isinstance(self.client, RedisCluster):
            # Cluster PUBLISH reaches every node, so any node can be listened to.
            await self.ready()
            node = self.client.get_nodes()[0]
            return aioredis.Redis(
                host=node.host, port=int(node.port), socket_connect_timeout=2, socket_timeout=None
            )
        return self.client

    async def _listen(
        self, on_keys: Callable[[list[str]], None], on_gap: Callable[[], None]
    ) -> None:
        delay = 0.05
        logged = False
        while True:
            pubsub: Any = None
            own: aioredis.Redis | None = None
            try:
                sub = await self._subscriber()
                own = sub if sub is not self.client else None
                pubsub = sub.pubsub()
                await pubsub.subscribe(self.channel)
                # Messages may have been missed while unsubscribed: start clean.
                on_gap()
                self.subscribed.set()
                delay, logged = 0.05, False
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message.get("data"), on_keys)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed.clear()
                on_gap()
                if not logged:
                    logger.warning("cache invalidation listener lost Redis (%r); L1 is off", exc)
                    logged = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                self.subscribed.clear()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                if own is not None:
                    with contextlib.suppress(Exception):
                        await own.aclose()

    def _dispatch(self, data: Any, on_keys: Callable[[list[str]], None]) -> None:
        try:
            payload = json.loads(data)
            if payload.get("o") != self.origin:
                on_keys([str(k) for k in payload.get("k", [])])
        except (ValueError, TypeError, AttributeError):
            logger.debug("ignored a malformed cache invalidation message")

    async def aclose(self) -> None:
        """Stop the listener."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
