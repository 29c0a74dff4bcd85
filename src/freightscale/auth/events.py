"""Invalidation events between instances: revocations and permission bumps.

An :class:`EventBus` carries small JSON events (``{"k": "jti", ...}``) to
every instance. :class:`MemoryBus` serves one process. :class:`RedisBus`
appends each event to a capped Redis stream *and* publishes it on a pub/sub
channel: subscribers apply it at once, and every instance also reads the
stream every ``sync_interval`` seconds, so a message lost while the pub/sub
connection was down is applied within that bound. If the stream was trimmed
past what an instance last read, it emits a ``reset`` event so the instance
drops every local cache (safe, only slower). Applying an event twice is
harmless.

Background tasks start lazily on :meth:`EventBus.start` (the first request)
and stop in :meth:`EventBus.aclose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from redis.exceptions import RedisError

from freightscale.backends.redis import RedisClient
from freightscale.exceptions import StoreUnavailableError
from freightscale.telemetry import get_counter

__all__ = ["Event", "EventBus", "MemoryBus", "RedisBus"]

logger = logging.getLogger("freightscale.auth")

Event = dict[str, Any]
Handler = Callable[[Event], None]


class EventBus(Protocol):
    """Delivers invalidation events to every instance (this one included)."""

    @property
    def started(self) -> bool:
        """True once background delivery runs (always true without background work)."""
        ...

    def subscribe(self, handler: Handler) -> None:
        """Call ``handler`` with every event (published here or elsewhere)."""
        ...

    async def publish(self, event: Event) -> None:
        """Deliver ``event`` to every instance; local handlers run before this returns."""
        ...

    async def start(self) -> None:
        """Start background delivery (idempotent, cheap once started)."""
        ...

    async def aclose(self) -> None:
        """Stop background delivery."""
        ...


class MemoryBus:
    """An :class:`EventBus` for a single process."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []

    @property
    def started(self) -> bool:
        """Always true: nothing runs in the background."""
        return True

    def subscribe(self, handler: Handler) -> None:
        """Register ``handler``."""
        self._handlers.append(handler)

    async def publish(self, event: Event) -> None:
        """Run every handler with ``event``."""
        for handler in self._handlers:
            handler(event)

    async def start(self) -> None:
        """Nothing to start."""

    async def aclose(self) -> None:
        """Nothing to stop."""


class RedisBus:
    """An :class:`EventBus` over Redis pub/sub plus a capped stream.

    Args:
        client: a client from :func:`~freightscale.backends.redis.create_redis_client`,
            or a function returning it (or None while it is not open yet), for
            components built before the shared client opens.
        key_prefix: prefix of the channel and stream names.
        sync_interval: seconds between reads of the stream (the bound for missed messages).
        pubsub: also subscribe to the channel for immediate delivery.
        max_events: approximate length the stream is capped at.
    """

    def __init__(
        self,
        client: RedisClient | Callable[[], RedisClient | None],
        *,
        key_prefix: str = "fs",
        sync_interval: float = 5.0,
        pubsub: bool = True,
        max_events: int = 10_000,
    ) -> None:
        self._source = client
        self.channel = f"{key_prefix}:auth:events"
        self.stream = f"{key_prefix}:auth:log"
        self.sync_interval = sync_interval
        self.use_pubsub = pubsub
        self.max_events = max_events
        self._handlers: list[Handler] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._last_id: str | None = None
        self._failing = False

    def __repr__(self) -> str:
        return f"RedisBus(channel={self.channel!r}, started={self._started})"

    @property
    def started(self) -> bool:
        """True once the background tasks run."""
        return self._started

    def _client(self) -> RedisClient:
        source = self._source
        client = source() if callable(source) and not hasattr(source, "xadd") else source
        if client is None:
            raise StoreUnavailableError("the Redis client of the auth event bus is not open yet")
        return client  # type: ignore[return-value]

    def subscribe(self, handler: Handler) -> None:
        """Register ``handler``."""
        self._handlers.append(handler)

    def _deliver(self, event: Event) -> None:
        for handler in self._handlers:
            try:
                handler(event)
            except Exception:
                logger.exception("auth event handler failed on %r", event)

    async def publish(self, event: Event) -> None:
        """Apply ``event`` here, append it to the stream and publish it.

        Raises:
            redis.exceptions.RedisError: when Redis is down (the caller translates it).
        """
        self._deliver(event)
        data = json.dumps(event, separators=(",", ":"))
        await self._client().xadd(
            self.stream, {"e": data}, maxlen=self.max_events, approximate=True
        )
        await self._client().publish(self.channel, data)

    async def start(self) -> None:
        """Start the stream poller and the pub/sub listener once."""
        if self._started:
            return
        try:
            self._client()
        except StoreUnavailableError:
            return  # not open yet: the next request tries again
        self._started = True
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self._init_position()
        self._tasks.append(asyncio.create_task(self._poll_loop(), name="freightscale-auth-poll"))
        if self.use_pubsub:
            self._tasks.append(
                asyncio.create_task(self._listen_loop(), name="freightscale-auth-sub")
            )

    async def _init_position(self) -> None:
        last = await self._client().xrevrange(self.stream, "+", "-", count=1)
        self._last_id = _id(last[0][0]) if last else "0-0"

    async def poll(self) -> int:
        """Read and apply the events appended since the last read; return how many."""
        if self._last_id is None:
            await self._init_position()
            return 0
        applied = 0
        first = await self._client().xrange(self.stream, "-", "+", count=1)
        if first and _newer(_id(first[0][0]), self._last_id) and self._last_id != "0-0":
            # The stream was trimmed past what we read: some events may be lost.
            self._deliver({"k": "reset"})
        while True:
            entries = await self._client().xrange(self.stream, f"({self._last_id}", "+", count=500)
            entries = entries or []
            for entry_id, fields in entries:
                self._last_id = _id(entry_id)
                raw: Any = (fields or {}).get(b"e") or (fields or {}).get("e")
                try:
                    event = json.loads(raw)
                except (TypeError, ValueError):
                    continue
                if isinstance(event, dict):
                    self._deliver(event)
                    applied += 1
            if len(entries) < 500:
                return applied

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval)
            try:
                await self.poll()
            except (RedisError, OSError, TimeoutError) as exc:
                self._outage("revocation log poll", exc)
            else:
                self._recovered()

    async def _listen_loop(self) -> None:
        delay = 0.1
        while True:
            try:
                pubsub = self._client().pubsub()
                try:
                    await pubsub.subscribe(self.channel)
                    await self.poll()  # catch up on what was published while we were away
                    delay = 0.1
                    self._recovered()
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None and message.get("type") == "message":
                            self._on_message(message.get("data"))
                finally:
                    # Bounded: closing a pub/sub connection mid-read must not hang shutdown.
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(1.0):
                            await pubsub.aclose()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self._outage("pub/sub listener", exc)
            except Exception as exc:  # e.g. a client that cannot do pub/sub: rely on polling
                logger.warning("auth pub/sub unavailable (%r); relying on the stream poll", exc)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _on_message(self, data: Any) -> None:
        try:
            event = json.loads(data)
        except (TypeError, ValueError):
            return
        if isinstance(event, dict):
            self._deliver(event)

    def _outage(self, what: str, exc: BaseException) -> None:
        if not self._failing:
            get_counter("freightscale.backend.outages").add(
                1, {"service": "redis", "component": "auth.events"}
            )
            logger.warning("auth event bus: %s failed (%r); retrying", what, exc)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            logger.warning("auth event bus recovered")
        self._failing = False

    async def aclose(self) -> None:
        """Cancel the background tasks (the client is not closed)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            if pending:
                logger.warning("auth event bus: %d task(s) did not stop within 2s", len(pending))
        self._started = False


def _id(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _newer(a: str, b: str) -> bool:
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    return (int(ams), int(aseq or 0)) > (int(bms), int(bseq or 0))
