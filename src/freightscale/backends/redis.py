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

This module is the public facade and holds the factory; the rest lives in
private modules: ``_redis_url`` (URL parsing), ``_redis_pool`` (the bounded
pool and the deadline connection) and ``_redis_helpers`` (``driver_kwargs``,
``ensure_ready``, ``ping``, ``translate_redis_error``).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from freightscale.backends._redis_helpers import (
    driver_kwargs,
    ensure_ready,
    ping,
    translate_redis_error,
)
from freightscale.backends._redis_pool import (
    _BoundedPool,
    _DeadlineConnection,
    _DeadlineSSLConnection,
)
from freightscale.backends._redis_url import RedisTarget, parse_redis_url
from freightscale.exceptions import ConfigurationError
from freightscale.settings.redis import RedisSettings

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

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"
"""What :func:`create_redis_client` returns: a single-node/Sentinel or a Cluster client."""


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


_LEAN_UNSUPPORTED = frozenset(
    {"connection_class", "credential_provider", "event_dispatcher", "maint_notifications_config",
     "protocol"}
)  # fmt: skip
"""Overrides that make :func:`create_redis_client` fall back to redis-py's own blocking pool."""
