"""Tracking events: append to a shipment's timeline, read the timeline."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    DateTime,
    Integer,
    Select,
    String,
    Text,
    bindparam,
    insert,
    literal,
    select,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from examples.freightops.models import Shipment, TrackingEvent
from examples.freightops.runtime import services
from examples.freightops.web import (
    JSON,
    Body,
    Problem,
    body,
    cached,
    int_param,
    invalidate,
)
from examples.freightops.web import tenant_id as current_tenant
from freightscale.auth import require_permission

__all__ = ["routes"]

_EVENT_COLUMNS = (
    TrackingEvent.id,
    TrackingEvent.kind,
    TrackingEvent.location,
    TrackingEvent.note,
    TrackingEvent.occurred_at,
)

_EVENT_KEYS = tuple(column.key for column in _EVENT_COLUMNS)


class NewEvent(Body):
    kind: str
    location: str = ""
    note: str = ""
    occurred_at: dt.datetime | None = None


def _timeline_statement() -> Select[*tuple[Any, ...]]:
    """The tenant's shipment ``sid`` outer-joined to its events, oldest first (built once).

    No row: no such shipment for this tenant; one row of NULL event columns:
    no events yet. One round trip either way.
    """
    tid, sid = bindparam("tid", type_=Integer), bindparam("sid", type_=Integer)
    return (
        select(Shipment.id.label("shipment"), *_EVENT_COLUMNS)
        .select_from(Shipment)
        .outerjoin(
            TrackingEvent,
            (TrackingEvent.shipment_id == Shipment.id) & (TrackingEvent.tenant_id == tid),
        )
        .where(Shipment.id == sid, Shipment.tenant_id == tid)
        .order_by(TrackingEvent.occurred_at, TrackingEvent.id)
        .limit(500)
    )


_TIMELINE = _timeline_statement()


@require_permission("tracking:read")
@cached(lambda request: [f"timeline:{request.path_params['shipment_id']}"])
async def timeline(request: Request) -> Response:
    """``GET /api/shipments/{id}/events``: the shipment's events, oldest first."""
    tid = current_tenant(request)
    shipment_id = int_param(request, "shipment_id")
    async with services(request).reader() as conn:
        rows = (await conn.execute(_TIMELINE, {"tid": tid, "sid": shipment_id})).mappings().all()
    if not rows:
        raise Problem(404, "no such shipment")
    events = [{key: row[key] for key in _EVENT_KEYS} for row in rows if row["id"] is not None]
    return JSON({"shipment_id": shipment_id, "events": events})


@require_permission("tracking:write")
async def append_event(request: Request) -> Response:
    """``POST /api/shipments/{id}/events``: record a checkpoint, delay or note."""
    event = await body(request, NewEvent)
    if not 1 <= len(event.kind) <= 30:
        raise Problem(422, "kind must have 1 to 30 characters")
    tid = current_tenant(request)
    shipment_id = int_param(request, "shipment_id")
    # One statement, so no transaction: the event is inserted only if the
    # tenant owns the shipment (INSERT … SELECT … WHERE); no row back: 404.
    source = select(
        literal(tid, Integer),
        Shipment.id,
        literal(event.kind, String),
        literal(event.location[:60], String),
        literal(event.note[:2000], Text),
        literal(event.occurred_at or dt.datetime.now(dt.UTC), DateTime(timezone=True)),
    ).where(Shipment.id == shipment_id, Shipment.tenant_id == tid)
    stmt = (
        insert(TrackingEvent)
        .from_select(
            ["tenant_id", "shipment_id", "kind", "location", "note", "occurred_at"], source
        )
        .returning(TrackingEvent.id)
    )
    async with services(request).autocommit() as conn:
        new_id = await conn.scalar(stmt)
    if new_id is None:
        raise Problem(404, "no such shipment")
    await invalidate(request, f"timeline:{shipment_id}", f"shipment:{shipment_id}")
    return JSON({"id": new_id, "shipment_id": shipment_id, "kind": event.kind}, status_code=201)


routes = [
    Route("/api/shipments/{shipment_id:int}/events", timeline, methods=["GET"]),
    Route("/api/shipments/{shipment_id:int}/events", append_event, methods=["POST"]),
]
