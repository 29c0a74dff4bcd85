"""The Redis backend: ``limits``' Lua scripts as one script, one EVALSHA per request.

:class:`RedisLimitBackend` runs ``limits``' own Lua scripts (the ones its
``RedisStorage`` registers) composed into **one** script, so a request with
several limits costs one ``EVALSHA``: acquire each limit in order (stopping
at the first refusal, as ``limits``' users do), then read each window for
the headers. Every key a request touches carries the same hash tag
(``{rule:strategy:key}``), so the script is valid on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Sequence
from math import floor, inf
from typing import Any

import redis.asyncio as aioredis
from limits import RateLimitItem
from limits.aio.storage.redis.bridge import RedisBridge
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from freightscale.backends.redis import RedisClient, ensure_ready
from freightscale.ratelimit.storage import STRATEGY_CODES, LimitState, item_suffix, limit_specs

__all__ = ["MULTI_LIMIT_SCRIPT", "RedisLimitBackend"]

_MAX_COMMANDS = 1024  # packed command templates kept (rules x tenant plans)


def _as_function(name: str, body: str | bytes) -> str:
    # limits' scripts read the KEYS/ARGV globals; as parameters they shadow them.
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    return f"local function {name}(KEYS, ARGV)\n{text}\nend\n"


_DRIVER = """
local strategy = ARGV[1]
local now = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local out = {}
local ok = true
local ki = 1
for i = 1, n do
  local limit = tonumber(ARGV[3 + 2 * i])
  local expiry = tonumber(ARGV[4 + 2 * i])
  local hit = 1
  if strategy == 'fw' then
    local k = {KEYS[ki]}
    ki = ki + 1
    local count
    if ok then
      count = tonumber(incr_expire(k, {expiry, cost}))
      if count > limit then ok = false; hit = 0 end
    else
      count = tonumber(redis.call('get', k[1])) or 0
    end
    table.insert(out, {hit, count, redis.call('pttl', k[1]), 0, 0})
  elseif strategy == 'mw' then
    local k = {KEYS[ki]}
    ki = ki + 1
    if ok then
      if not acquire_moving_window(k, {now, limit, expiry, cost}) then ok = false; hit = 0 end
    end
    local w = moving_window(k, {now - expiry, limit})
    if w then
      table.insert(out, {hit, w[1], w[2], 0, 0})
    else
      table.insert(out, {hit, '', 0, 0, 0})
    end
  else
    local k = {KEYS[ki], KEYS[ki + 1]}
    ki = ki + 2
    if ok then
      if not acquire_sliding_window(k, {limit, expiry, cost}) then ok = false; hit = 0 end
    end
    local w = sliding_window(k, {expiry})
    table.insert(out, {hit, tonumber(w[1]) or 0, tonumber(w[2]) or 0,
                       tonumber(w[3]) or 0, tonumber(w[4]) or 0})
  end
end
return out
"""

MULTI_LIMIT_SCRIPT = (
    _as_function("incr_expire", RedisBridge.SCRIPT_INCR_EXPIRE)
    + _as_function("acquire_moving_window", RedisBridge.SCRIPT_ACQUIRE_MOVING_WINDOW)
    + _as_function("moving_window", RedisBridge.SCRIPT_MOVING_WINDOW)
    + _as_function("acquire_sliding_window", RedisBridge.SCRIPT_ACQUIRE_SLIDING_WINDOW)
    + _as_function("sliding_window", RedisBridge.SCRIPT_SLIDING_WINDOW)
    + _DRIVER
)
"""``limits``' Redis Lua scripts, unchanged, as functions of one script plus a driver."""


_Batch = list[tuple[bytes, "asyncio.Future[Any]"]]


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class _Command:
    """The EVALSHA of one (limits, strategy, cost), packed once; only keys and time vary.

    The wire form is RESP, as redis-py's ``pack_command`` writes it; the
    parts that never change for a rule (the count, the SHA, the strategy,
    the cost, every limit's quota and window) are bytes built here, and a
    request adds its keys and ``now``.
    """

    __slots__ = ("_head", "_middle", "_prefix", "_suffixes", "_tail", "items", "specs")

    def __init__(
        self, sha: str, prefix: str, items: Sequence[RateLimitItem], strategy: str, cost: int
    ) -> None:
        self.items = items
        self.specs = limit_specs(items)
        suffixes = []
        for spec in self.specs:
            if strategy == "sliding-window-counter":
                suffixes.append(f"/{spec.suffix}/-1".encode())  # limits' previous-window key
            suffixes.append(f"/{spec.suffix}".encode())
        self._suffixes = tuple(suffixes)
        args: list[bytes] = [str(cost).encode(), str(len(self.specs)).encode()]
        for spec in self.specs:
            args += [str(spec.amount).encode(), str(spec.expiry).encode()]
        count = 3 + len(suffixes) + 2 + len(args)
        self._head = b"*%d\r\n" % count + b"".join(
            map(_bulk, (b"EVALSHA", sha.encode(), str(len(suffixes)).encode()))
        )
        self._middle = _bulk(STRATEGY_CODES[strategy].encode())
        self._tail = b"".join(map(_bulk, args))
        self._prefix = f"{prefix}:{{".encode()

    def pack(self, tag: str, now: float) -> bytes:
        """The command for one request: ``now`` as redis-py would send it (``repr``)."""
        base = self._prefix + tag.encode() + b"}"
        parts = [self._head]
        for suffix in self._suffixes:
            parts.append(_bulk(base + suffix))
        parts += [self._middle, _bulk(repr(now).encode()), self._tail]
        return b"".join(parts)


class _Batcher:
    """Sends the EVALSHAs of one event-loop tick together, on one connection.

    Each request is still one ``EVALSHA`` (at most one round trip), but the
    requests that arrive in the same tick share a connection checkout, one
    socket write and one read loop. Commands are packed once per rule (see
    :class:`_Command`) instead of argument by argument, and a batch has one
    deadline — ``timeout`` after its first request was queued, so no request
    waits longer than that — instead of one timer per request. Each batch is
    its own task, so a slow batch never holds up the next.
    """

    def __init__(self, client: aioredis.Redis, script: str, timeout: float | None) -> None:
        self.client = client
        self.script = script
        self.sha = hashlib.sha1(script.encode("utf-8")).hexdigest()  # noqa: S324 - Redis' script id
        self.timeout = timeout
        self._queue: _Batch = []
        self._deadline: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, command: bytes) -> asyncio.Future[Any]:
        """Queue one packed ``EVALSHA``; the future gets its reply or error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queue:
            if self.timeout is not None:
                self._deadline = loop.time() + self.timeout
            loop.call_soon(self._flush)
        self._queue.append((command, future))
        return future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._send(batch, self._deadline))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: _Batch, deadline: float | None) -> None:
        results: list[Any]
        try:
            async with asyncio.timeout_at(deadline):
                results = await self._execute(batch)
                if any(isinstance(r, NoScriptError) for r in results):
                    # First use, or Redis restarted and lost its script cache.
                    await self.client.script_load(self.script)
                    results = await self._execute(batch)
        except asyncio.CancelledError:  # the loop is going away: so are the callers
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller went away
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, batch: _Batch) -> list[Any]:
        pool = self.client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            payload = b"".join(command for command, _ in batch)

            async def round_trip() -> list[Any]:
                await conn.send_packed_command(payload)
                replies: list[Any] = []
                for _ in batch:
                    try:
                        # The batch's deadline bounds the reads (math.inf: no timer per reply).
                        replies.append(await conn.read_response(timeout=math.inf))
                    except ResponseError as exc:  # a script error: this request only
                        replies.append(exc)
                return replies

            async def failed(error: Exception, *_: object) -> None:
                await conn.disconnect()

            # Connection errors (a stale pooled socket after a Redis restart):
            # reconnect and resend, as redis-py's own pipeline does.
            replies: list[Any] = await conn.retry.call_with_retry(round_trip, failed)
            return replies
        finally:
            await pool.release(conn)


class RedisLimitBackend:
    """Counters in Redis (single node, Sentinel or Cluster), one EVALSHA per hit.

    Args:
        client: a redis-py asyncio client (see ``freightscale.backends.redis``).
        prefix: key prefix (``fs:rl``).
        owns_client: close ``client`` in :meth:`aclose`.
        timeout: when set, a hit fails with ``TimeoutError`` after this many
            seconds (single node and Sentinel: one deadline per batch of
            concurrent requests rather than one timer per request).
    """

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        *,
        owns_client: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.owns_client = owns_client
        self.timeout = timeout
        self._ready = False
        # Cluster: one script call per request, routed by its hash tag. Single node
        # and Sentinel: batched per event-loop tick (same one EVALSHA per request).
        self._script = client.register_script(MULTI_LIMIT_SCRIPT)
        self._batcher = (
            None
            if isinstance(client, RedisCluster)
            else _Batcher(client, MULTI_LIMIT_SCRIPT, timeout)
        )
        self._commands: dict[tuple[int, str, int], _Command] = {}

    def keys_for(self, tag: str, items: Sequence[RateLimitItem], strategy: str) -> list[str]:
        """Every key one hit touches; all share the ``{tag}`` hash slot."""
        base = f"{self.prefix}:{{{tag}}}"
        keys = []
        for item in items:
            key = f"{base}/{item_suffix(item)}"
            if strategy == "sliding-window-counter":
                keys.append(f"{key}/-1")  # limits' previous-window key
            keys.append(key)
        return keys

    async def hit(
        self, tag: str, items: Sequence[RateLimitItem], strategy: str, cost: int
    ) -> list[LimitState]:
        """See :meth:`LimitBackend.hit`."""
        now = time.time()
        if self._batcher is not None:
            command = self._command(items, strategy, cost)
            rows = await self._batcher.submit(command.pack(tag, now))
        else:
            args: list[str | int | float] = [STRATEGY_CODES[strategy], now, cost, len(items)]
            for item in items:
                args += [item.amount, item.get_expiry()]
            keys = self.keys_for(tag, items, strategy)
            async with asyncio.timeout(self.timeout):
                if not self._ready:
                    await ensure_ready(self.client)
                    self._ready = True
                rows = await self._script(keys=keys, args=args)
        return [_state(strategy, item, row, now) for item, row in zip(items, rows, strict=True)]

    def _command(self, items: Sequence[RateLimitItem], strategy: str, cost: int) -> _Command:
        # Packed once per limits tuple (a rule's, a cached plan's), strategy and cost.
        assert self._batcher is not None
        key = (id(items), strategy, cost)
        command = self._commands.get(key)
        if command is None or command.items is not items:
            command = _Command(self._batcher.sha, self.prefix, items, strategy, cost)
            if type(items) is tuple:  # other sequences may change: packed afresh
                if len(self._commands) >= _MAX_COMMANDS:
                    self._commands.clear()
                self._commands[key] = command
        return command

    async def warm_up(self) -> None:
        """Connect, discover a Cluster's topology and load the script ahead of traffic.

        Raises:
            redis.exceptions.RedisError: when Redis is unreachable.
        """
        await ensure_ready(self.client)
        self._ready = True
        await self.client.script_load(MULTI_LIMIT_SCRIPT)

    async def aclose(self) -> None:
        """Close the client if this backend created it."""
        if self.owns_client:
            await self.client.aclose()
            # A Sentinel-managed client leaves the sentinels' own clients open.
            pool = getattr(self.client, "connection_pool", None)
            manager = getattr(pool, "sentinel_manager", None)
            for sentinel in getattr(manager, "sentinels", ()):
                await sentinel.aclose()


def _state(strategy: str, item: RateLimitItem, row: list[object], now: float) -> LimitState:
    allowed = int(row[0]) == 1  # type: ignore[call-overload]
    expiry = item.get_expiry()
    if strategy == "fixed-window":
        count, pttl = int(row[1]), int(row[2])  # type: ignore[call-overload]
        reset = now + (pttl / 1000 if pttl > 0 else (expiry if count else 0))
        return LimitState(item, allowed, max(0, item.amount - count), reset)
    if strategy == "moving-window":
        oldest = float(row[1]) if row[1] else now  # type: ignore[arg-type]
        count = int(row[2])  # type: ignore[call-overload]
        return LimitState(item, allowed, max(0, item.amount - count), oldest + expiry)
    prev_count, prev_ttl, cur_count, cur_ttl = (int(v) for v in row[1:5])  # type: ignore[call-overload]
    # limits' SlidingWindowCounterRateLimiter.get_window_stats, on the values read above.
    weighted = prev_count * (prev_ttl / 1000) / expiry + cur_count
    remaining = max(0, item.amount - floor(weighted))
    if not (prev_count or cur_count):
        return LimitState(item, allowed, remaining, now)
    prev_reset, cur_reset = inf, inf
    if prev_count:
        prev_reset = (prev_ttl / 1000) % (expiry / prev_count)
    if cur_count:
        cur_reset = (cur_ttl / 1000) % expiry
    return LimitState(item, allowed, remaining, now + min(prev_reset, cur_reset))
