"""Small helpers around any Redis client: driver kwargs, readiness, PING, errors.

Private to :mod:`freightscale.backends.redis`, which re-exports every public
name here.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from freightscale.exceptions import StoreError, StoreUnavailableError

if TYPE_CHECKING:
    from freightscale.backends.redis import RedisClient

try:  # redis-py >= 7: without an explicit version, every new connection reads package metadata
    from redis.driver_info import DriverInfo as _DriverInfo
except ImportError:  # pragma: no cover - older redis-py resolves its version once at import
    _DriverInfo = None  # type: ignore[assignment,misc]


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
