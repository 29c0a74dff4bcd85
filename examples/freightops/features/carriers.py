"""Carriers: the trucking companies a tenant works with."""

from __future__ import annotations

from sqlalchemy import func, insert, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from examples.freightops.models import Carrier, Driver, Shipment
from examples.freightops.runtime import services
from examples.freightops.web import (
    JSON,
    Body,
    Problem,
    body,
    cached,
    fetch_one,
    int_param,
    invalidate,
    keyset_page,
    tenant_id,
)
from freightscale.auth import require_permission

__all__ = ["routes"]

_COLUMNS = (Carrier.id, Carrier.name, Carrier.mc_number, Carrier.rating)


class NewCarrier(Body):
    name: str
    mc_number: str
    rating: float = 4.0


@require_permission("carriers:read")
@cached(["carriers"])
async def list_carriers(request: Request) -> Response:
    """``GET /api/carriers``."""
    stmt = select(*_COLUMNS).where(Carrier.tenant_id == tenant_id(request))
    async with services(request).reader() as conn:
        return JSON(await keyset_page(request, conn, stmt, Carrier.id))


@require_permission("carriers:read")
async def carrier_detail(request: Request) -> Response:
    """``GET /api/carriers/{id}``: the carrier with its driver and shipment counts."""
    tid = tenant_id(request)
    carrier_id = int_param(request, "carrier_id")
    async with services(request).reader() as conn:
        stmt = select(*_COLUMNS).where(Carrier.id == carrier_id, Carrier.tenant_id == tid)
        carrier = await fetch_one(conn, stmt, "carrier")
        carrier["drivers"] = await conn.scalar(
            select(func.count()).where(Driver.tenant_id == tid, Driver.carrier_id == carrier_id)
        )
        carrier["shipments"] = await conn.scalar(
            select(func.count()).where(Shipment.tenant_id == tid, Shipment.carrier_id == carrier_id)
        )
    return JSON(carrier)


@require_permission("carriers:write")
async def create_carrier(request: Request) -> Response:
    """``POST /api/carriers``."""
    data = await body(request, NewCarrier)
    if not 1 <= len(data.name.strip()) <= 120 or not 0 <= data.rating <= 5:
        raise Problem(422, "name must have 1 to 120 characters and rating be in [0, 5]")
    async with services(request).writer() as conn:
        new_id = await conn.scalar(
            insert(Carrier)
            .values(
                tenant_id=tenant_id(request),
                name=data.name.strip(),
                mc_number=data.mc_number[:20],
                rating=data.rating,
            )
            .returning(Carrier.id)
        )
    await invalidate(request, "carriers")
    return JSON({"id": new_id, "name": data.name.strip()}, status_code=201)


routes = [
    Route("/api/carriers", list_carriers, methods=["GET"]),
    Route("/api/carriers", create_carrier, methods=["POST"]),
    Route("/api/carriers/{carrier_id:int}", carrier_detail, methods=["GET"]),
]
