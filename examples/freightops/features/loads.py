"""Loads: the truck movements that carry shipments."""

from __future__ import annotations

from sqlalchemy import insert, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from examples.freightops.models import Carrier, Driver, Load, Shipment
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

_COLUMNS = (
    Load.id,
    Load.shipment_id,
    Load.carrier_id,
    Load.driver_id,
    Load.status,
    Load.truck,
    Load.created_at,
)
LOAD_STATUSES = ("planned", "dispatched", "loaded", "unloaded", "closed")


class NewLoad(Body):
    shipment_id: int
    carrier_id: int | None = None
    driver_id: int | None = None
    truck: str = ""


@require_permission("loads:read")
@cached(["loads"])
async def list_loads(request: Request) -> Response:
    """``GET /api/loads?status=&shipment_id=&driver_id=&limit=&cursor=``."""
    stmt = select(*_COLUMNS).where(Load.tenant_id == tenant_id(request))
    status = request.query_params.get("status")
    if status:
        if status not in LOAD_STATUSES:
            raise Problem(400, f"status must be one of {', '.join(LOAD_STATUSES)}")
        stmt = stmt.where(Load.status == status)
    for name in ("shipment_id", "driver_id"):
        value = int_param(request, name)
        if value is not None:
            stmt = stmt.where(getattr(Load, name) == value)
    async with services(request).reader() as conn:
        return JSON(await keyset_page(request, conn, stmt, Load.id))


@require_permission("loads:read")
async def load_detail(request: Request) -> Response:
    """``GET /api/loads/{id}``."""
    stmt = select(*_COLUMNS).where(
        Load.id == int_param(request, "load_id"), Load.tenant_id == tenant_id(request)
    )
    async with services(request).reader() as conn:
        return JSON(await fetch_one(conn, stmt, "load"))


@require_permission("loads:write")
async def create_load(request: Request) -> Response:
    """``POST /api/loads``: plan a truck movement for one of the tenant's shipments."""
    data = await body(request, NewLoad)
    tid = tenant_id(request)
    async with services(request).writer() as conn:
        for model, value, what in (
            (Shipment, data.shipment_id, "shipment"),
            (Carrier, data.carrier_id, "carrier"),
            (Driver, data.driver_id, "driver"),
        ):
            if value is not None:
                found = await conn.scalar(
                    select(model.id).where(model.id == value, model.tenant_id == tid)
                )
                if found is None:
                    raise Problem(422, f"no such {what}")
        new_id = await conn.scalar(
            insert(Load)
            .values(
                tenant_id=tid,
                shipment_id=data.shipment_id,
                carrier_id=data.carrier_id,
                driver_id=data.driver_id,
                truck=data.truck[:20],
            )
            .returning(Load.id)
        )
    await invalidate(request, "loads", f"shipment:{data.shipment_id}")
    return JSON({"id": new_id, "shipment_id": data.shipment_id, "status": "planned"}, 201)


routes = [
    Route("/api/loads", list_loads, methods=["GET"]),
    Route("/api/loads", create_load, methods=["POST"]),
    Route("/api/loads/{load_id:int}", load_detail, methods=["GET"]),
]
