"""One factory from a URL to a bounded, retrying ``redis.asyncio`` client.

Supported URLs::

    redis://[user:password@]host:6379/0          single node
    rediss://…                                   single node over TLS
    redis+sentinel://[user:pw@]h1:26379,h2:26379/mymaster[/db]
    redis+cluster://[user:pw@]h1:7000,h2:7001    Redis Cluster (seed nodes)

Every client gets connect and socket timeouts, retry with exponential
backoff on connection errors, a health-check interval and a *bounded* pool.
redis-py's default asyncio pool grows without limit (1000 concurrent requests
open 1000 connections); a single-node client here uses a blocking pool that
waits up to ``pool_timeout`` for a free connection instead. Cluster and
Sentinel clients cap connections per node, but redis-py raises at once when
the cap is hit rather than waiting (a documented limitation).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qs, unquote

import redis
import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.asyncio.cluster import ClusterNode, RedisCluster
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
    if target.ssl:
        pool_kwargs["connection_class"] = aioredis.SSLConnection
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
