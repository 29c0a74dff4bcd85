"""Shipments: filtered, paged list; detail; create; status changes."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import Integer, Select, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from examples.freightops.models import (
    SHIPMENT_STATUSES,
    Carrier,
    Invoice,
    Load,
    Shipment,
    TrackingEvent,
)
from examples.freightops.runtime import services
from examples.freightops.sql import json_rows
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

__all__ = ["COLUMNS", "routes"]

COLUMNS = (
    Shipment.id,
    Shipment.reference,
    Shipment.customer,
    Shipment.status,
    Shipment.origin,
    Shipment.destination,
    Shipment.weight_kg,
    Shipment.carrier_id,
    Shipment.pickup_at,
    Shipment.delivery_at,
    Shipment.created_at,
    Shipment.updated_at,
)

# Allowed status changes; delivered and cancelled are final.
_NEXT = {
    "pending": {"booked", "cancelled"},
    "booked": {"in_transit", "cancelled", "pending"},
    "in_transit": {"delivered", "cancelled"},
    "delivered": set(),
    "cancelled": set(),
}


class NewShipment(Body):
    customer: str
    origin: str
    destination: str
    weight_kg: float
    reference: str | None = None
    carrier_id: int | None = None
    pickup_at: dt.datetime | None = None


class StatusChange(Body):
    status: str
    location: str = ""
    note: str = ""


@require_permission("shipments:read")
@cached(["shipments"])
async def list_shipments(request: Request) -> Response:
    """``GET /api/shipments?status=&carrier_id=&origin=&destination=&limit=&cursor=|offset=``."""
    stmt = select(*COLUMNS).where(Shipment.tenant_id == tenant_id(request))
    status = request.query_params.get("status")
    if status:
        if status not in SHIPMENT_STATUSES:
            raise Problem(400, f"status must be one of {', '.join(SHIPMENT_STATUSES)}")
        stmt = stmt.where(Shipment.status == status)
    carrier = int_param(request, "carrier_id")
    if carrier is not None:
        stmt = stmt.where(Shipment.carrier_id == carrier)
    for name in ("origin", "destination"):
        value = request.query_params.get(name)
        if value:
            stmt = stmt.where(getattr(Shipment, name) == value[:60])
    async with services(request).reader() as conn:
        return JSON(await keyset_page(request, conn, stmt, Shipment.id))


async def fetch_shipment(conn: object, tid: int, shipment_id: int | None) -> dict[str, object]:
    """The tenant's shipment ``shipment_id`` as a dict, or a 404 problem.

    Another tenant's shipment is a 404 too: its existence is not revealed.
    """
    stmt = (
        select(*COLUMNS, Carrier.name.label("carrier_name"))
        .outerjoin(Carrier, (Carrier.id == Shipment.carrier_id) & (Carrier.tenant_id == tid))
        .where(Shipment.id == shipment_id, Shipment.tenant_id == tid)
    )
    return await fetch_one(conn, stmt, "shipment")  # type: ignore[arg-type]


def _detail_statement() -> Select[*tuple[Any, ...]]:
    """The shipment, its carrier's name, loads, invoices and event count: one statement.

    Built once, with bound parameters ``tid`` and ``sid``: the child sets are
    JSON-aggregating scalar subqueries, so a cache miss costs one round trip.
    """
    tid, sid = bindparam("tid", type_=Integer), bindparam("sid", type_=Integer)
    loads = select(json_rows(Load.id, Load.status, Load.driver_id, Load.truck)).where(
        Load.tenant_id == tid, Load.shipment_id == Shipment.id
    )
    invoices = select(
        json_rows(Invoice.id, Invoice.number, Invoice.status, Invoice.amount_cents)
    ).where(Invoice.tenant_id == tid, Invoice.shipment_id == Shipment.id)
    events = select(func.count()).where(
        TrackingEvent.tenant_id == tid, TrackingEvent.shipment_id == Shipment.id
    )
    return (
        select(
            *COLUMNS,
            Carrier.name.label("carrier_name"),
            loads.scalar_subquery().label("loads"),
            invoices.scalar_subquery().label("invoices"),
            events.scalar_subquery().label("events"),
        )
        .outerjoin(Carrier, (Carrier.id == Shipment.carrier_id) & (Carrier.tenant_id == tid))
        .where(Shipment.id == sid, Shipment.tenant_id == tid)
    )


_DETAIL = _detail_statement()


@require_permission("shipments:read")
@cached(lambda request: [f"shipment:{request.path_params['shipment_id']}"])
async def shipment_detail(request: Request) -> Response:
    """``GET /api/shipments/{id}``: the shipment with its carrier, loads and invoices."""
    params = {"tid": tenant_id(request), "sid": int_param(request, "shipment_id")}
    async with services(request).reader() as conn:
        shipment = await fetch_one(conn, _DETAIL, "shipment", params)
    return JSON(shipment)


@require_permission("shipments:write")
async def create_shipment(request: Request) -> Response:
    """``POST /api/shipments``: book a new shipment (status ``pending``)."""
    data = await body(request, NewShipment)
    if not 0 < data.weight_kg <= 100_000:
        raise Problem(422, "weight_kg must be in (0, 100000]")
    for name in ("customer", "origin", "destination"):
        if not 1 <= len(getattr(data, name).strip()) <= 60:
            raise Problem(422, f"{name} must have 1 to 60 characters")
    tid = tenant_id(request)
    reference = data.reference or f"FO-{secrets.token_hex(5).upper()}"
    now = dt.datetime.now(dt.UTC)
    try:
        async with services(request).writer() as conn:
            carrier_name = None
            if data.carrier_id is not None:
                carrier_name = await conn.scalar(
                    select(Carrier.name).where(
                        Carrier.id == data.carrier_id, Carrier.tenant_id == tid
                    )
                )
                if carrier_name is None:
                    raise Problem(422, "no such carrier")
            # RETURNING the row: no read-back query.
            created = await conn.execute(
                insert(Shipment)
                .values(
                    tenant_id=tid,
                    reference=reference[:40],
                    customer=data.customer.strip(),
                    origin=data.origin.strip(),
                    destination=data.destination.strip(),
                    weight_kg=data.weight_kg,
                    carrier_id=data.carrier_id,
                    pickup_at=data.pickup_at,
                    status="pending",
                    created_at=now,
                    updated_at=now,
                )
                .returning(*COLUMNS)
            )
            shipment = {**created.mappings().one(), "carrier_name": carrier_name}
            new_id = shipment["id"]
            await conn.execute(
                insert(TrackingEvent).values(
                    tenant_id=tid,
                    shipment_id=new_id,
                    kind="created",
                    location=data.origin.strip(),
                    occurred_at=now,
                )
            )
    except IntegrityError:
        raise Problem(409, f"reference {reference!r} is already used") from None
    await invalidate(request, "shipments")
    return JSON(shipment, status_code=201, headers={"Location": f"/api/shipments/{new_id}"})


@require_permission("shipments:write")
async def change_status(request: Request) -> Response:
    """``PATCH /api/shipments/{id}/status``: move the shipment along its life cycle."""
    change = await body(request, StatusChange)
    if change.status not in SHIPMENT_STATUSES:
        raise Problem(422, f"status must be one of {', '.join(SHIPMENT_STATUSES)}")
    tid = tenant_id(request)
    shipment_id = int_param(request, "shipment_id")
    now = dt.datetime.now(dt.UTC)
    async with services(request).writer() as conn:
        current = await conn.scalar(
            select(Shipment.status)
            .where(Shipment.id == shipment_id, Shipment.tenant_id == tid)
            .with_for_update()
        )
        if current is None:
            raise Problem(404, "no such shipment")
        if change.status != current and change.status not in _NEXT[current]:
            raise Problem(409, f"a {current} shipment cannot become {change.status}")
        values: dict[str, object] = {"status": change.status, "updated_at": now}
        if change.status == "delivered":
            values["delivery_at"] = now
        await conn.execute(
            update(Shipment)
            .where(Shipment.id == shipment_id, Shipment.tenant_id == tid)
            .values(**values)
        )
        await conn.execute(
            insert(TrackingEvent).values(
                tenant_id=tid,
                shipment_id=shipment_id,
                kind=f"status:{change.status}",
                location=change.location[:60],
                note=change.note[:2000],
                occurred_at=now,
            )
        )
        shipment = await fetch_shipment(conn, tid, shipment_id)
    await invalidate(request, "shipments", f"shipment:{shipment_id}", f"timeline:{shipment_id}")
    return JSON(shipment)


routes = [
    Route("/api/shipments", list_shipments, methods=["GET"]),
    Route("/api/shipments", create_shipment, methods=["POST"]),
    Route("/api/shipments/{shipment_id:int}", shipment_detail, methods=["GET"]),
    Route("/api/shipments/{shipment_id:int}/status", change_status, methods=["PATCH"]),
]
