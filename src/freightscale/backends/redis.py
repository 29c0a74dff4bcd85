"""One factory from a URL to a bounded, retrying ``redis.asyncio`` client.

Supported URLs::

    redis://[user:password@]host:6379/0          single node
    rediss://…                                   single node over TLS
    redis+sentinel://[user:pw@]h1:26379,h2:26379/mymaster[/db]
    redis+cluster://[user:pw@]h1:7000,h2:7001    Redis Cluster (seed nodes)

Every client gets connect and socket timeouts, retry with exponential
backoff on connection errors, a health-check interval and a *bounded* pool.
redis-py's default asyncio pool grows without limit (1000 concurrent requests
open 1000 connections); a single-node client here uses a bounded pool that
waits up to ``pool_timeout`` for a free connection instead. Cluster and
Sentinel clients cap connections per node, but redis-py raises at once when
the cap is hit rather than waiting (a documented limitation).

The single-node client is also built for a cheap hot path, because one GET is
all a session read or a cache lookup costs: redis-py's ``BlockingConnectionPool``
takes a condition, a lock and a timer per checkout, and its connections
bound every write with ``asyncio.wait_for`` (a Task per command on Python
3.11) and every read with an ``asyncio.timeout``. :class:`_BoundedPool` hands
out an idle connection without any of that and only waits (with a timer) when
all connections are busy; :class:`_DeadlineConnection` keeps the per-command
``socket_timeout`` with one re-armed timer per connection instead of two per
command. Together they make a GET cost about 0.6x the CPU it costs through a
default ``redis.asyncio.Redis`` (``bench/sessions_bench.py --mode cpu``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qs, unquote

import redis
import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from freightscale.exceptions import ConfigurationError, StoreError, StoreUnavailableError
from freightscale.settings.redis import REDIS_SCHEMES, RedisSettings

__all__ = [
    "RedisClient",
    "RedisTarget",
    "create_redis_client",
    "driver_kwargs",
    "ensure_ready",
    "parse_redis_url",
    "ping",
    "translate_redis_error",
]

_get_running_loop = asyncio.get_running_loop
_current_task = asyncio.current_task

try:  # redis-py >= 7: without an explicit version, every new connection reads package metadata
    from redis.driver_info import DriverInfo as _DriverInfo
except ImportError:  # pragma: no cover - older redis-py resolves its version once at import
    _DriverInfo = None  # type: ignore[assignment,misc]

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"
"""What :func:`create_redis_client` returns: a single-node/Sentinel or a Cluster client."""


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL."""

    kind: Literal["single", "sentinel", "cluster"]
    nodes: tuple[tuple[str, int], ...]
    ssl: bool = False
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    service_name: str | None = None
    url: str = field(default="", repr=False)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse any URL :func:`create_redis_client` accepts.

    Raises:
        ConfigurationError: naming the problem (scheme, host list, port, db).
    """
    if "://" not in url:
        raise ConfigurationError(
            f"redis URL {url[:40]!r} has no scheme; expected redis://host:port"
        )
    scheme, rest = url.split("://", 1)
    if scheme not in REDIS_SCHEMES:
        raise ConfigurationError(
            f"redis URL scheme {scheme!r} is not one of {', '.join(REDIS_SCHEMES)}"
        )
    rest, _, query = rest.partition("?")
    userinfo, _, hostpart = rest.rpartition("@")
    hosts, _, path = hostpart.partition("/")
    username = password = None
    if userinfo:
        user, sep, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
    nodes = tuple(_parse_node(h, url) for h in hosts.split(",") if h)
    if not nodes:
        raise ConfigurationError(f"redis URL {_mask(url)!r} names no host")
    segments = [s for s in path.split("/") if s]
    options = parse_qs(query)
    if scheme == "redis+sentinel":
        if not segments:
            raise ConfigurationError(
                f"sentinel URL {_mask(url)!r} needs the master name: redis+sentinel://h1:26379/mymaster"
            )
        service, db_part = segments[0], segments[1] if len(segments) > 1 else "0"
        return RedisTarget(
            "sentinel", nodes, "ssl" in options, _db(db_part, url), username, password, service, url
        )
    if scheme == "redis+cluster":
        if segments and segments[0] != "0":
            raise ConfigurationError(f"cluster URL {_mask(url)!r}: Redis Cluster has only db 0")
        return RedisTarget("cluster", nodes, "ssl" in options, 0, username, password, None, url)
    if len(nodes) != 1:
        raise ConfigurationError(
            f"redis URL {_mask(url)!r} names {len(nodes)} hosts; use redis+cluster:// or "
            "redis+sentinel:// for several"
        )
    db = _db(segments[0], url) if segments else 0
    return RedisTarget("single", nodes, scheme == "rediss", db, username, password, None, url)


def _parse_node(text: str, url: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "6379"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"redis URL {_mask(url)!r}: bad host:port {text!r}")
    return host, int(port)


def _db(text: str, url: str) -> int:
    if not text.isdigit():
        raise ConfigurationError(f"redis URL {_mask(url)!r}: database {text!r} is not a number")
    return int(text)


def _mask(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"


def create_redis_client(settings: RedisSettings | str, **overrides: Any) -> RedisClient:
    """Return a bounded, retrying asyncio client for ``settings.url``.

    Creating the client opens no connection: the first command does, so a
    down Redis never blocks start-up.

    Args:
        settings: the Redis settings section, or a bare URL (default settings).
        overrides: extra keyword arguments for redis-py's client or pool.

    Raises:
        ConfigurationError: when no URL is configured or it is malformed.
    """
    if isinstance(settings, str):
        settings = RedisSettings(url=SecretStr(settings))
    url = settings.url.get_secret_value()
    if not url:
        raise ConfigurationError(
            "FREIGHTSCALE_REDIS__URL is empty: there is no Redis to connect to "
            "(use the memory stores, or set a redis:// URL)"
        )
    target = parse_redis_url(url)
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.02), settings.retries)
    common: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.socket_timeout,
        "health_check_interval": settings.health_check_interval,
        "retry": retry,
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "username": target.username,
        "password": target.password,
        "client_name": settings.client_name or None,
    }
    common.update(driver_kwargs())
    common.update(overrides)
    if target.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
            max_connections=settings.max_connections,
            ssl=target.ssl,
            **common,
        )
    if target.kind == "sentinel":
        sentinel_kwargs = {
            "socket_connect_timeout": settings.connect_timeout,
            "socket_timeout": settings.socket_timeout,
            **driver_kwargs(),  # the per-sentinel clients too (see driver_kwargs)
        }
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes), sentinel_kwargs=sentinel_kwargs, **common
        )
        client: aioredis.Redis = sentinel.master_for(
            target.service_name or "mymaster",
            db=target.db,
            max_connections=settings.max_connections,
            ssl=target.ssl,
        )
        return client
    host, port = target.nodes[0]
    pool_kwargs = dict(common)
    pool: aioredis.ConnectionPool
    if _LEAN_UNSUPPORTED.isdisjoint(overrides):
        # The deadline connection enforces socket_timeout itself (see its docstring).
        pool_kwargs["command_timeout"] = pool_kwargs["socket_timeout"]
        pool_kwargs["socket_timeout"] = None
        pool_kwargs["connection_class"] = (
            _DeadlineSSLConnection if target.ssl else _DeadlineConnection
        )
        pool = _BoundedPool(
            host=host,
            port=port,
            db=target.db,
            max_connections=settings.max_connections,
            pool_timeout=settings.pool_timeout,
            **pool_kwargs,
        )
    else:
        # Options that hook into redis-py's own pool and connection internals
        # (credential providers, RESP3 maintenance notifications, a custom
        # connection class) keep redis-py's blocking pool.
        if target.ssl:
            pool_kwargs.setdefault("connection_class", aioredis.SSLConnection)
        pool = aioredis.BlockingConnectionPool(
            host=host,
            port=port,
            db=target.db,
            max_connections=settings.max_connections,
            timeout=settings.pool_timeout,
            **pool_kwargs,
        )
    # from_pool: the client owns the pool, so aclose() disconnects it too.
    return aioredis.Redis.from_pool(pool)


# redis-py 8 renamed can_read_destructive() (now deprecated) to can_read() and
# added should_reconnect(); the pool below works with either generation.
_can_read: Callable[[AbstractConnection], Awaitable[bool]] = (
    getattr(AbstractConnection, "can_read", None) or AbstractConnection.can_read_destructive
)
_should_reconnect: Callable[[AbstractConnection], bool] | None = getattr(
    AbstractConnection, "should_reconnect", None
)

_LEAN_UNSUPPORTED = frozenset(
    {"connection_class", "credential_provider", "event_dispatcher", "maint_notifications_config",
     "protocol"}
)  # fmt: skip
"""Overrides that make :func:`create_redis_client` fall back to redis-py's own blocking pool."""


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


def driver_kwargs() -> dict[str, Any]:
    """Keyword arguments every ``redis.asyncio`` client built on the event loop needs.

    Without an explicit ``driver_info``, redis-py >= 7 calls
    ``importlib.metadata.version("redis")`` in every client and connection
    constructor: a scan of ``sys.path`` (an ``os.stat`` per entry) on the event
    loop each time. The version is known at import. Empty for older redis-py.
    Use it as ``redis.asyncio.Redis(host=host, port=port, **driver_kwargs())``.
    """
    if _DriverInfo is None:  # pragma: no cover - older redis-py
        return {}
    return {"driver_info": _DriverInfo(lib_version=redis.__version__)}


async def ensure_ready(client: RedisClient) -> None:
    """Finish a Cluster client's topology discovery before concurrent use.

    redis-py's asyncio ``RedisCluster`` initializes lazily on its first
    command; a burst of concurrent first commands races that and can fail or
    even *repeat* a command (seen here: 50 concurrent INCRBY counted 51).
    ``initialize()`` is idempotent and serialised by the client's own lock, so
    callers await this once before their first command. A no-op for
    single-node and Sentinel clients.
    """
    if isinstance(client, RedisCluster):
        await client.initialize()


async def ping(client: RedisClient, timeout: float = 2.0) -> float:
    """PING ``client`` and return the round trip in seconds.

    Raises:
        StoreUnavailableError: when Redis does not answer within ``timeout``.
    """
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
    except TimeoutError as exc:
        raise StoreUnavailableError(f"redis did not answer PING within {timeout}s") from exc
    except RedisError as exc:
        raise translate_redis_error(exc) from exc
    return time.perf_counter() - start


def translate_redis_error(exc: BaseException) -> StoreError:
    """Map a redis-py error to freightscale's tree (the one choke point).

    Connection errors, timeouts and pool exhaustion mean "unavailable";
    anything else (a wrong type, a script error) is a plain ``StoreError``.
    """
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | TimeoutError | OSError):
        return StoreUnavailableError(f"redis unavailable: {exc}")
    if type(exc).__name__ == "MaxConnectionsError":
        return StoreUnavailableError(f"redis connection pool exhausted: {exc}")
    return StoreError(f"redis error: {exc}")
