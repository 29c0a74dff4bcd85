"""Query-result cache: read-only SQLAlchemy ``SELECT`` results in the cache store.

::

    queries = QueryCache(backend)
    rows = await queries.all(session, select(Shipment.id, Shipment.status), ttl=30,
                             tags=["shipments"])

The key is a digest of the compiled SQL, its bound parameters, the dialect
and the current tenant (from :func:`freightscale.context.get_tenant_id`), so
two tenants never share a result. Rows are stored as JSON with tagged
datetime / date / time / timedelta / Decimal / UUID / bytes values (never
pickle) and come back as plain dicts. Concurrent misses in one process run
the query once. When the store is down the query simply runs.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql import CompoundSelect, Select

from freightscale.caching.backend import CacheBackend
from freightscale.caching.singleflight import SingleFlight
from freightscale.context import get_tenant_id
from freightscale.exceptions import StoreError

__all__ = ["QueryCache"]

logger = logging.getLogger("freightscale.caching")
_UNSET: Any = object()


def _encode(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$d": value.isoformat()}
    if isinstance(value, dt.time):
        return {"$t": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"$td": value.total_seconds()}
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"query cache cannot store a {type(value).__name__}")


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "$dt": dt.datetime.fromisoformat,
    "$d": dt.date.fromisoformat,
    "$t": dt.time.fromisoformat,
    "$td": lambda s: dt.timedelta(seconds=s),
    "$dec": Decimal,
    "$uuid": uuid.UUID,
    "$b": base64.b64decode,
}


def _decode(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        ((tag, value),) = obj.items()
        decoder = _DECODERS.get(tag)
        if decoder is not None:
            return decoder(value)
    return obj


class QueryCache:
    """Cache read-only query results in a :class:`CacheBackend`.

    Args:
        backend: the cache backend (shared with the response cache is fine).
        default_ttl: seconds a result is kept (default: ``query_default_ttl``).
        max_rows: results with more rows are returned but not stored.
        clock: wall clock (tests inject one).
    """

    def __init__(
        self,
        backend: CacheBackend,
        *,
        default_ttl: float | None = None,
        max_rows: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.default_ttl = default_ttl or backend.settings.query_default_ttl
        self.max_rows = max_rows or backend.settings.query_max_rows
        self.clock = clock
        self.flight: SingleFlight[list[dict[str, Any]]] = SingleFlight()

    def key(
        self,
        executor: AsyncSession | AsyncConnection,
        statement: Select[Any] | CompoundSelect[Any],
        tenant: str | None,
    ) -> str:
        """Return the cache key of ``statement`` for ``tenant``."""
        if isinstance(executor, AsyncSession):
            dialect = executor.get_bind().dialect
        else:
            dialect = executor.dialect
        compiled = statement.compile(dialect=dialect)
        params = json.dumps(compiled.params, sort_keys=True, default=_encode)
        material = json.dumps([dialect.name, str(compiled), params, tenant])
        return "q:" + hashlib.blake2b(material.encode(), digest_size=20).hexdigest()

    async def all(
        self,
        executor: AsyncSession | AsyncConnection,
        statement: Select[Any] | CompoundSelect[Any],
        *,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        tenant: str | None = _UNSET,
    ) -> list[dict[str, Any]]:
        """Return the rows of ``statement`` as dicts, from the cache when fresh.

        Args:
            executor: an ``AsyncSession`` or ``AsyncConnection``.
            statement: a ``select()`` (only read-only statements are accepted).
            ttl: seconds to keep the result.
            tags: tags for :meth:`CacheBackend.invalidate`.
            tenant: the tenant the result belongs to (default: the current one).

        Raises:
            TypeError: ``statement`` is not a SELECT.
        """
        if not isinstance(statement, Select | CompoundSelect):
            raise TypeError(
                f"QueryCache caches read-only SELECT statements, got {type(statement).__name__}"
            )
        tenant = get_tenant_id() if tenant is _UNSET else tenant
        key = self.key(executor, statement, tenant)
        cached = await self._get(key)
        if cached is not None:
            return cached
        future, leader = self.flight.join(key)
        if not leader:
            shared = await SingleFlight.wait(future)
            if shared is not None:
                return shared
        rows: list[dict[str, Any]] | None = None
        try:
            result = await executor.execute(statement)
            rows = [dict(row) for row in result.mappings()]
            if leader:
                self.flight.finish(key, rows)
                await self._set(key, rows, ttl or self.default_ttl, tags)
            return rows
        finally:
            if leader:
                self.flight.finish(key, rows)

    async def _get(self, key: str) -> list[dict[str, Any]] | None:
        try:
            raw = await self.backend.get(key)
        except StoreError:
            return None
        if raw is None:
            return None
        try:
            payload = json.loads(raw, object_hook=_decode)
            if payload["x"] <= self.clock():
                return None
            rows: list[dict[str, Any]] = [
                dict(zip(payload["c"], r, strict=True)) for r in payload["r"]
            ]
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a corrupt query cache entry %s", key)
            return None
        return rows

    async def _set(
        self, key: str, rows: list[dict[str, Any]], ttl: float, tags: Iterable[str]
    ) -> None:
        if len(rows) > self.max_rows:
            return
        columns = list(rows[0]) if rows else []
        try:
            payload = json.dumps(
                {"x": self.clock() + ttl, "c": columns, "r": [list(r.values()) for r in rows]},
                default=_encode,
                separators=(",", ":"),
            ).encode()
        except TypeError as exc:
            logger.warning("query result not cached: %s", exc)
            return
        await self.backend.set(key, payload, expires_in=ttl, tags=tags)

    async def invalidate(self, tags: Iterable[str]) -> int:
        """Remove every cached result carrying any of ``tags`` (on every instance)."""
        return await self.backend.invalidate(tags)
