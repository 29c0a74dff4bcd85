"""Redis-side helpers of the cache: tag index, fill lock and L1 coherence.

Only used when the cache's store is a :class:`~freightscale.stores.redis.RedisStore`.
The miss path costs two round trips: one script looks the entry up and, if
it is absent, takes the fill lock in the same step; one script stores the
filled entry, indexes its tags and releases the lock. A script touches only
keys of one Cluster slot: response keys carry a hash tag that their lock key
shares, and on a Cluster the tag sets (other slots) go in a pipeline beside
the script. Keys without a shared slot fall back to single-key commands.
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
from redis.crc import key_slot

from freightscale.backends.redis import driver_kwargs, ensure_ready
from freightscale.stores.redis import RedisStore

__all__ = ["RedisCacheOps", "tag_key"]

logger = logging.getLogger("freightscale.caching")

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


# KEYS: entry, lock. ARGV: token, lock ttl (ms).
# The entry's bytes; else 1 when this caller took the lock, 0 when another holds it.
_GET_OR_LOCK = """
local value = redis.call('get', KEYS[1])
if value then return value end
if redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

# KEYS: entry, lock, tag sets... ARGV: value, ttl (ms), tag ttl (ms), lock token
# ("" = none), the entry's key as tag sets list it, channel ("" = no publish), message.
_FILL = """
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 3, #KEYS do
  redis.call('sadd', KEYS[i], ARGV[5])
  redis.call('pexpire', KEYS[i], ARGV[3])
end
if ARGV[4] ~= '' and redis.call('get', KEYS[2]) == ARGV[4] then redis.call('del', KEYS[2]) end
if ARGV[6] ~= '' then redis.call('publish', ARGV[6], ARGV[7]) end
return 1
"""


# KEYS: tag sets. ARGV: entry-key prefix, channel ("" = no publish), origin.
# Pops every entry under the tags, deletes the sets, tells other instances' L1.
# Entry keys are read from the sets, so this runs on one node only (not a Cluster).
_POP_TAGGED = """
local keys, seen = {}, {}
for i = 1, #KEYS do
  for _, member in ipairs(redis.call('smembers', KEYS[i])) do
    if not seen[member] then
      seen[member] = true
      keys[#keys + 1] = member
    end
  end
  redis.call('del', KEYS[i])
end
for i = 1, #keys, 500 do
  local full, part = {}, {}
  for j = i, math.min(i + 499, #keys) do
    full[#full + 1] = ARGV[1] .. keys[j]
    part[#part + 1] = keys[j]
  end
  redis.call('unlink', unpack(full))
  if ARGV[2] ~= '' then
    redis.call('publish', ARGV[2], cjson.encode({o = ARGV[3], k = part}))
  end
end
return keys
"""


def _as_bytes(value: bytes | bytearray | str) -> bytes:
    # The store's client never decodes, but a caller's client might.
    return value.encode() if isinstance(value, str) else bytes(value)


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
        self._get_or_lock = self.client.register_script(_GET_OR_LOCK)
        self._fill = self.client.register_script(_FILL)
        self._pop_tagged = self.client.register_script(_POP_TAGGED)
        self._cluster = isinstance(self.client, RedisCluster)
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

    async def invalidate(self, tags: list[str]) -> set[str]:
        """Delete every entry under ``tags`` and the tag sets, and tell the other instances.

        One script (one round trip) on a single node or Sentinel; on a Cluster,
        where entries spread over slots, :meth:`pop_tagged` and :meth:`publish`.
        Returns the entry keys.
        """
        await self.ready()
        if self._cluster:
            keys = await self.pop_tagged(tags)
            if keys:
                await self.publish(keys)
            return keys
        found = await self._pop_tagged(
            keys=[self.store.full_key(tag_key(tag)) for tag in tags],
            args=[self.store.full_key(""), self.channel, self.origin],
        )
        return {_as_bytes(k).decode() for k in found}

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
        ok = await self.client.set(self._lock_key(key), token, nx=True, px=self.lock_ttl_ms)
        return token if ok else None

    def _lock_key(self, key: str) -> str:
        return self.store.full_key("l:" + key)

    def scripted(self, key: str) -> bool:
        """True when ``key`` and its lock key live in one slot (always, off a Cluster)."""
        if not self._cluster:
            return True
        return key_slot(self.store.full_key(key).encode()) == key_slot(self._lock_key(key).encode())

    async def get_or_lock(self, key: str) -> tuple[bytes | None, str | None]:
        """One round trip: ``(value, None)`` if stored, else ``(None, token or None)``.

        The lock is tried only when the entry is absent, atomically with the
        lookup: a token means no entry existed and this caller fills it;
        None means another caller holds the lock.
        """
        await self.ready()
        if not self.scripted(key):
            value = await self.client.get(self.store.full_key(key))
            if value is not None:
                return _as_bytes(value), None
            return None, await self.lock(key)
        token = secrets.token_hex(8)
        result = await self._get_or_lock(
            keys=[self.store.full_key(key), self._lock_key(key)],
            args=[token, self.lock_ttl_ms],
        )
        if isinstance(result, bytes | bytearray | str):
            return _as_bytes(result), None
        return None, (token if result == 1 else None)

    async def fill(
        self,
        key: str,
        value: bytes,
        ttl_ms: int,
        tags: list[str],
        token: str,
        *,
        publish: bool,
    ) -> None:
        """Store ``value``, index it under ``tags``, release the lock ``token`` ("" = none).

        One script on one node; on a Cluster the tag sets go in a pipeline beside
        it. ``publish`` tells the other instances to drop ``key`` from their L1
        (needed only when the entry replaces one they may hold).
        """
        await self.ready()
        if not self.scripted(key):
            await self.client.set(self.store.full_key(key), value, px=ttl_ms)
            if tags:
                await self.add_tags(key, tags)
            if token:
                await self.unlock(key, token)
            if publish:
                await self.publish([key])
            return
        tag_keys = [self.store.full_key(tag_key(tag)) for tag in tags]
        message = json.dumps({"o": self.origin, "k": [key]}) if publish else ""
        args: list[bytes | str | int] = [
            value, ttl_ms, self.tag_ttl_ms, token, key, self.channel if publish else "",
        ]  # fmt: skip
        keys = [self.store.full_key(key), self._lock_key(key)]
        if self._cluster:
            if tag_keys:
                await self.add_tags(key, tags)
            await self._fill(keys=keys, args=[*args, message])
            return
        await self._fill(keys=[*keys, *tag_keys], args=[*args, message])

    async def unlock(self, key: str, token: str) -> None:
        """Release the lock if it is still ours (compare-and-delete in Lua)."""
        await self._release(keys=[self._lock_key(key)], args=[token])

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
            # Same credentials as the cluster client; driver_kwargs() keeps
            # redis-py from scanning package metadata on the event loop.
            auth = {k: v for k in ("username", "password") if (v := node.connection_kwargs.get(k))}
            return aioredis.Redis(
                host=node.host,
                port=int(node.port),
                socket_connect_timeout=2,
                socket_timeout=None,
                **auth,
                **driver_kwargs(),
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
