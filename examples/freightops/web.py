"""Helpers every feature module uses: JSON, errors, permissions, paging, caching.

Kept deliberately small: a feature module reads like the business rule it
implements, and the cross-cutting work (who is asking, for which tenant, is
it cached) happens here or in middleware.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response

from examples.freightops.runtime import services
from freightscale.caching import add_cache_tags, get_response_cache
from freightscale.context import Principal, get_principal
from freightscale.db import is_unavailable, unavailable_response
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


async def database_error_handler(request: Request, exc: Exception) -> Response:
    """Pool exhaustion or an unreachable database: 503 problem+json, retry soon.

    freightscale.db's classification decides; anything else is a real bug and
    propagates (500 from the error middleware, logged once).
    """
    reason = is_unavailable(exc)
    if reason is None:
        raise exc
    retry_after = services(request).settings.database.unavailable_retry_after
    return unavailable_response(reason, retry_after=retry_after, instance=request.url.path)


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


async def fetch_one(
    conn: AsyncConnection,
    stmt: Select[*tuple[Any, ...]],
    what: str,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The one row ``stmt`` selects (with bound ``params``), as a dict, or a 404 problem.

    Callers filter by the tenant, so another tenant's row is a 404 too ("no
    such <what>"): its existence is not revealed.
    """
    row = (await conn.execute(stmt, params)).mappings().one_or_none()
    if row is None:
        raise Problem(404, f"no such {what}")
    return dict(row)


TagSource = Sequence[str] | Callable[[Request], Sequence[str]]


def _tenant_tags(tenant: object, tags: Sequence[str]) -> list[str]:
    # Tags are per tenant: one tenant's write never evicts another's entries.
    return [f"t{tenant}:{tag}" for tag in tags]


def cached(tags: TagSource, *, dashboard: bool = False) -> Callable[[Endpoint], Endpoint]:
    """Tag a read route's response for freightscale's response cache.

    Whether and how long a path is cached is the cache's rule
    (``cache_settings()`` in ``application.py``: tenant or user scope, keyed
    on the principal freightscale.auth verified); this decorator only names
    what the response depends on, so writes can invalidate it
    (:func:`invalidate`). ``dashboard`` marks the TTL-only route
    (documentation: its rule has no tags to invalidate).
    """

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def tagged(request: Request) -> Response:
            tag_list = tags(request) if callable(tags) else tags
            if tag_list:
                add_cache_tags(request.scope, *_tenant_tags(tenant_id(request), tag_list))
            return await endpoint(request)

        return tagged

    return decorate


async def invalidate(request: Request, *tags: str) -> None:
    """Make the tenant's cached responses tagged with any of ``tags`` stale (all workers)."""
    # The middleware only exposes itself to GET/HEAD and rule-matched writes;
    # the app keeps a reference for every other write.
    cache = get_response_cache(request.scope) or services(request).response_cache
    if cache is not None:
        await cache.invalidate(_tenant_tags(tenant_id(request), tags))
