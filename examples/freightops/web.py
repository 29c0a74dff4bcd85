"""Helpers every feature module uses: JSON, errors, permissions, paging, caching.

Kept deliberately small: a feature module reads like the business rule it
implements, and the cross-cutting work (who is asking, for which tenant, is
it cached) happens here or in middleware.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response

from examples.freightops.runtime import services
from examples.freightops.standins import CachedBody
from freightscale.context import Principal, get_principal
from freightscale.errors import problem_response
from freightscale.responses import FastJSONResponse

__all__ = [
    "JSON",
    "Body",
    "Problem",
    "body",
    "cached",
    "int_param",
    "invalidate",
    "keyset_page",
    "principal",
    "requires",
    "tenant_id",
]

B = TypeVar("B", bound="Body")
Endpoint = Callable[[Request], Awaitable[Response]]


class JSON(FastJSONResponse):
    """A JSON response rendered by orjson (freightscale's ``FastJSONResponse``).

    On a 20 KB list it is several times faster than Starlette's stdlib-json
    ``JSONResponse``, and it serializes ``datetime`` without a custom encoder.
    """


class Problem(Exception):
    """Raise in a handler to answer with a problem+json response."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def problem_handler(request: Request, exc: Exception) -> Response:
    """Starlette exception handler turning :class:`Problem` into problem+json."""
    assert isinstance(exc, Problem)
    return problem_response(exc.status, detail=exc.detail, instance=request.url.path)


async def pool_timeout_handler(request: Request, exc: Exception) -> Response:
    """The connection pool stayed exhausted for ``pool_timeout``: 503, retry soon.

    TODO(db component): ``freightscale.db`` maps this itself.
    """
    return problem_response(
        503,
        detail="the database is busy; retry shortly",
        instance=request.url.path,
        headers={"Retry-After": "1"},
    )


def principal(request: Request) -> Principal:
    """The authenticated principal, or a 401 problem."""
    found = get_principal(request.scope)
    if found is None:
        raise Problem(401, "sign in first: send 'Authorization: Bearer <token>'")
    return found


def tenant_id(request: Request) -> int:
    """The principal's tenant id: the filter of every query."""
    tenant = principal(request).tenant_id
    if tenant is None:
        raise Problem(403, "this principal acts for no tenant")
    return int(tenant)


def requires(permission: str) -> Callable[[Endpoint], Endpoint]:
    """Allow the endpoint only to principals holding ``permission`` (401/403 otherwise)."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            if permission not in principal(request).scopes:
                raise Problem(403, f"your role lacks the {permission!r} permission")
            return await endpoint(request)

        return guarded

    return decorate


class Body(BaseModel):
    """Base of request bodies: unknown fields are rejected, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


async def body(request: Request, kind: type[B]) -> B:
    """Decode and validate the JSON request body as ``kind`` (400 / 422 problems)."""
    raw = await request.body()
    try:
        return kind.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise Problem(400, "the request body is not valid JSON") from None
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors)
        raise Problem(422, f"invalid request body: {detail}") from None


def int_param(request: Request, name: str, *, default: int | None = None) -> int | None:
    """An integer query or path parameter (400 when malformed)."""
    raw = request.path_params.get(name, request.query_params.get(name))
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise Problem(
            400, f"parameter {name!r} must be an integer, got {str(raw)[:20]!r}"
        ) from None
    if not -(2**62) < value < 2**62:
        raise Problem(400, f"parameter {name!r} is out of range")
    return value


async def keyset_page(
    request: Request, conn: AsyncConnection, stmt: Select[*tuple[Any, ...]], id_column: Any
) -> dict[str, Any]:
    """Run ``stmt`` one page at a time, newest first.

    ``?cursor=<id>`` pages by key (an index range scan however deep the page);
    ``?offset=<n>`` is supported for UIs that jump to a page number, at the
    usual cost of offset paging. ``?limit`` is capped at 200.
    """
    config = services(request).config
    limit = int_param(request, "limit", default=config.default_page_size) or 1
    limit = max(1, min(limit, 200))
    cursor = int_param(request, "cursor")
    offset = int_param(request, "offset")
    if cursor is not None:
        stmt = stmt.where(id_column < cursor)
    stmt = stmt.order_by(id_column.desc()).limit(limit + 1)
    if offset:
        stmt = stmt.offset(max(0, min(offset, 1_000_000)))
    rows = [dict(row) for row in (await conn.execute(stmt)).mappings()]
    more = len(rows) > limit
    items = rows[:limit]
    return {"items": items, "next_cursor": items[-1]["id"] if more and items else None}


TagSource = Sequence[str] | Callable[[Request], Sequence[str]]


def cached(tags: TagSource, *, dashboard: bool = False) -> Callable[[Endpoint], Endpoint]:
    """Serve a GET endpoint's 200 responses from the tenant's response cache.

    The key is the tenant, the principal's role and the full URL; ``tags``
    (fixed, or computed from the request) are what writes invalidate. Lists
    and details use ``list_cache_ttl``; ``dashboard=True`` uses the (TTL-only)
    ``dashboard_cache_ttl``. Bodies are cached gzip-compressed and sent as
    they are to clients that accept gzip. The naive profile has no cache.
    """

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def with_cache(request: Request) -> Response:
            svc = services(request)
            cache = svc.cache
            if cache is None:
                return await endpoint(request)
            who = principal(request)
            tag_list = tags(request) if callable(tags) else tags
            request_key = f"{','.join(sorted(who.roles))}|{request.url.path}?{request.url.query}"
            key, stamp, hit = await cache.lookup(str(who.tenant_id), request_key, tag_list)
            gzip_ok = "gzip" in request.headers.get("accept-encoding", "")
            if hit is not None:
                return _cached_response(hit, gzip_ok, "hit")
            response = await endpoint(request)
            if response.status_code != 200:
                return response
            body = bytes(response.body)
            entry = CachedBody(body, gzipped=False)
            if len(body) >= svc.settings.compression.minimum_size:
                level = svc.settings.compression.gzip_level
                entry = CachedBody(gzip.compress(body, level, mtime=0), gzipped=True)
            ttl = svc.config.dashboard_cache_ttl if dashboard else svc.config.list_cache_ttl
            await cache.save(key, stamp, entry, ttl=ttl)
            return _cached_response(entry, gzip_ok, "miss")

        return with_cache

    return decorate


def _cached_response(entry: CachedBody, gzip_ok: bool, state: str) -> Response:
    headers = {"x-cache": state, "vary": "Accept-Encoding"}
    if not entry.gzipped:
        return Response(entry.body, media_type="application/json", headers=headers)
    if gzip_ok:
        headers["content-encoding"] = "gzip"
        return Response(entry.body, media_type="application/json", headers=headers)
    return Response(gzip.decompress(entry.body), media_type="application/json", headers=headers)


async def invalidate(request: Request, *tags: str) -> None:
    """Make the tenant's cached responses tagged with any of ``tags`` stale."""
    cache = services(request).cache
    if cache is not None:
        await cache.invalidate(str(tenant_id(request)), tags)
