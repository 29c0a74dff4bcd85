"""The single-node client's bounded pool and deadline connection (the hot path).

Why they exist, and what they save, is told in :mod:`freightscale.backends.redis`;
:func:`~freightscale.backends.redis.create_redis_client` builds them. Private.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

_get_running_loop = asyncio.get_running_loop
_current_task = asyncio.current_task

# redis-py 8 renamed can_read_destructive() (now deprecated) to can_read() and
# added should_reconnect(); the pool below works with either generation.
_can_read: Callable[[AbstractConnection], Awaitable[bool]] = (
    getattr(AbstractConnection, "can_read", None) or AbstractConnection.can_read_destructive
)
_should_reconnect: Callable[[AbstractConnection], bool] | None = getattr(
    AbstractConnection, "should_reconnect", None
)


class _DeadlineConnection(aioredis.Connection):
    """A connection that bounds each write and read by ``command_timeout`` cheaply.

    redis-py (given ``socket_timeout``) wraps every write in ``asyncio.wait_for``
    (a Task on Python 3.11) and every read in ``asyncio.timeout`` (a timer
    handle scheduled and cancelled): together more CPU than the GET itself.
    Here redis-py gets no socket timeout; each write or read records its
    deadline instead, and one timer per connection, re-armed only when it
    fires (at most once per ``command_timeout`` while commands keep finishing
    in time; not at all while the connection is idle), cancels the task that
    is still waiting once its deadline has passed. The task then sees redis-py's
    own ``TimeoutError``, and redis-py has already dropped the connection, as
    it does after its own timeout. A read given an explicit ``timeout`` (pub/sub,
    blocking reads) keeps redis-py's handling; an outer cancellation stays a
    cancellation.
    """

    def __init__(self, *, command_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._command_timeout = command_timeout
        self._timeout = command_timeout or 0.0
        self._op_task: asyncio.Task[Any] | None = None
        self._op_cancelling = 0
        self._op_deadline = 0.0
        self._expired = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def _arm(self, extra: float = 0.0) -> asyncio.Task[Any] | None:
        # Callers have checked that a command_timeout is set.
        loop = _get_running_loop()
        task = _current_task(loop)
        if task is None:
            return None
        self._op_task = task
        self._op_cancelling = task.cancelling()
        deadline = self._op_deadline = loop.time() + self._timeout + extra
        if self._timer is None or self._timer_when > deadline or self._timer_loop is not loop:
            if self._timer is not None:  # a connecting write's later deadline, or another loop
                self._timer.cancel()
            self._schedule(loop, deadline)
        return task

    def _schedule(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._timer_loop, self._timer_when = loop, when
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        task, loop = self._op_task, self._timer_loop
        if task is None or loop is None:
            return  # idle: the next command re-arms
        if self._op_deadline > self._timer_when:
            self._schedule(loop, self._op_deadline)  # a later command is running: wait for it
            return
        self._expired = True
        writer = self._writer
        if writer is not None:
            # Drop the socket at once: the rest of a half-sent command must not
            # reach the server after the caller was told it failed.
            writer.transport.abort()
        task.cancel()

    def _disarm(self) -> None:
        self._op_task = None
        self._expired = False

    def _timed_out(self, task: asyncio.Task[Any], what: str) -> None:
        """Turn this connection's own cancellation into redis-py's TimeoutError."""
        if self._expired and task.uncancel() <= self._op_cancelling:
            raise RedisTimeoutError(
                f"Timeout {what} {self.host}:{self.port} (socket_timeout={self._command_timeout})"
            )

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """Write ``command``, bounded by ``command_timeout``."""
        if self._op_task is not None or self._command_timeout is None:
            # A nested write (the health-check PING) runs under the outer deadline.
            await super().send_packed_command(command, check_health)
            return
        # Not connected yet: redis-py connects first (and runs the handshake), so
        # the deadline also allows for the connect timeout.
        task = self._arm(0.0 if self.is_connected else self.socket_connect_timeout or 0.0)
        try:
            await super().send_packed_command(command, check_health)
        except asyncio.CancelledError:
            if task is not None:
                self._timed_out(task, "writing to")
            raise
        finally:
            self._disarm()

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        """Read one reply, bounded by ``command_timeout`` unless ``timeout`` is given."""
        if timeout is not None or self._op_task is not None or self._command_timeout is None:
            return await super().read_response(
                disable_decoding, timeout,
                disconnect_on_error=disconnect_on_error, push_request=push_request,
            )  # fmt: skip
        task = self._arm()
        try:
            return await super().read_response(
                disable_decoding, None,
                disconnect_on_error=disconnect_on_error, push_request=push_request,
            )  # fmt: skip
        except asyncio.CancelledError:
            if task is not None:
                self._timed_out(task, "reading from")
            raise
        finally:
            self._disarm()


class _DeadlineSSLConnection(_DeadlineConnection, aioredis.SSLConnection):
    """:class:`_DeadlineConnection` over TLS (``rediss://``)."""


class _BoundedPool(aioredis.ConnectionPool):
    """A connection pool of at most ``max_connections`` with a cheap checkout.

    An idle connection is handed out without a lock, a condition or a timer.
    Only when all ``max_connections`` are busy does a checkout wait, up to
    ``pool_timeout``, in a FIFO queue; a released connection goes straight to
    the oldest waiter, so newcomers cannot overtake it. Gives up with redis-py's
    ``ConnectionError("No connection available.")``, as ``BlockingConnectionPool``.
    """

    def __init__(self, *, pool_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool_timeout = pool_timeout
        self._waiters: deque[asyncio.Future[AbstractConnection]] = deque()

    async def get_connection(
        self, command_name: Any = None, *keys: Any, **options: Any
    ) -> AbstractConnection:
        """Return a connected, clean connection, waiting if all are busy."""
        if self._available_connections:
            connection = self._available_connections.pop()
            self._in_use_connections.add(connection)
        elif len(self._in_use_connections) < self.max_connections:
            connection = self.make_connection()  # type: ignore[no-untyped-call]
            self._in_use_connections.add(connection)
        else:
            connection = await self._wait_for_release()
        try:
            # redis-py's own checks (connected, no unread data or EOF), which
            # cost a retry wrapper and several awaits, only when needed.
            clean = connection.is_connected and not await _can_read(connection)
        except (RedisConnectionError, OSError):
            clean = False
        if not clean:
            try:
                await self.ensure_connection(connection)
            except BaseException:
                await self.release(connection)
                raise
        return connection

    async def _wait_for_release(self) -> AbstractConnection:
        waiter: asyncio.Future[AbstractConnection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._pool_timeout):
                return await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return waiter.result()  # handed over just as the wait ran out
            self._forget(waiter)
            raise RedisConnectionError("No connection available.") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                await self.release(waiter.result())  # cancelled after the hand-over: pass it on
            else:
                self._forget(waiter)
            raise

    def _forget(self, waiter: asyncio.Future[AbstractConnection]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    async def release(self, connection: AbstractConnection) -> None:
        """Return ``connection``: to the oldest waiter, else to the idle list."""
        self._in_use_connections.remove(connection)
        if _should_reconnect is not None and _should_reconnect(connection):
            await connection.disconnect()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_use_connections.add(connection)
                waiter.set_result(connection)
                return
        self._available_connections.append(connection)
