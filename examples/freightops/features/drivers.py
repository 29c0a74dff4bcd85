"""Drivers of the tenant's carriers."""

from __future__ import annotations

from sqlalchemy import insert, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from examples.freightops.models import Carrier, Driver
from examples.freightops.runtime import services
from examples.freightops.web import (
    JSON,
    Body,
    Problem,
    body,
    cached,
    int_param,
    invalidate,
    keyset_page,
    tenant_id,
)
from freightscale.auth import require_permission

__all__ = ["routes"]

_COLUMNS = (Driver.id, Driver.carrier_id, Driver.user_id, Driver.name, Driver.license_no)


class NewDriver(Body):
    carrier_id: int
    name: str
    license_no: str
    phone: str = ""


@require_permission("drivers:read")
@cached(["drivers"])
async def list_drivers(request: Request) -> Response:
    """``GET /api/drivers?carrier_id=``."""
    stmt = select(*_COLUMNS).where(Driver.tenant_id == tenant_id(request))
    carrier = int_param(request, "carrier_id")
    if carrier is not None:
        stmt = stmt.where(Driver.carrier_id == carrier)
    async with services(request).reader() as conn:
        return JSON(await keyset_page(request, conn, stmt, Driver.id))


@require_permission("drivers:write")
async def create_driver(request: Request) -> Response:
    """``POST /api/drivers``: add a driver to one of the tenant's carriers."""
    data = await body(request, NewDriver)
    tid = tenant_id(request)
    async with services(request).writer() as conn:
        found = await conn.scalar(
            select(Carrier.id).where(Carrier.id == data.carrier_id, Carrier.tenant_id == tid)
        )
        if found is None:
            raise Problem(422, "no such carrier")
        new_id = await conn.scalar(
            insert(Driver)
            .values(
                tenant_id=tid,
                carrier_id=data.carrier_id,
                name=data.name[:120],
                license_no=data.license_no[:30],
                phone=data.phone[:30],
            )
            .returning(Driver.id)
        )
    await invalidate(request, "drivers")
    return JSON({"id": new_id, "carrier_id": data.carrier_id, "name": data.name}, 201)


routes = [
    Route("/api/drivers", list_drivers, methods=["GET"]),
    Route("/api/drivers", create_driver, methods=["POST"]),
]
