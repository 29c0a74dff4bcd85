"""The per-tenant dashboard: aggregates that are expensive to compute, so cached."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from examples.freightops.models import Invoice, Load, Shipment, TrackingEvent
from examples.freightops.runtime import services
from examples.freightops.web import JSON, cached, tenant_id
from freightscale.auth import require_permission

__all__ = ["routes"]


@require_permission("dashboard:read")
@cached([], dashboard=True)
async def dashboard(request: Request) -> Response:
    """``GET /api/dashboard``: shipments by status, busiest lanes, invoices, activity.

    Cached per tenant for ``dashboard_cache_ttl`` seconds and *not*
    invalidated by writes: a dashboard a few seconds old is fine, and
    recomputing it on every shipment update would defeat the cache.
    """
    tid = tenant_id(request)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=24)
    async with services(request).reader() as conn:
        by_status = {
            row.status: {"count": row.n, "weight_kg": round(row.kg or 0.0, 1)}
            for row in await conn.execute(
                select(
                    Shipment.status,
                    func.count().label("n"),
                    func.sum(Shipment.weight_kg).label("kg"),
                )
                .where(Shipment.tenant_id == tid)
                .group_by(Shipment.status)
            )
        }
        lanes = [
            {"origin": row.origin, "destination": row.destination, "shipments": row.n}
            for row in await conn.execute(
                select(Shipment.origin, Shipment.destination, func.count().label("n"))
                .where(Shipment.tenant_id == tid)
                .group_by(Shipment.origin, Shipment.destination)
                .order_by(func.count().desc(), Shipment.origin, Shipment.destination)
                .limit(5)
            )
        ]
        invoices = {
            row.status: {"count": row.n, "amount_cents": int(row.total or 0)}
            for row in await conn.execute(
                select(
                    Invoice.status,
                    func.count().label("n"),
                    func.sum(Invoice.amount_cents).label("total"),
                )
                .where(Invoice.tenant_id == tid)
                .group_by(Invoice.status)
            )
        }
        loads = {
            row.status: row.n
            for row in await conn.execute(
                select(Load.status, func.count().label("n"))
                .where(Load.tenant_id == tid)
                .group_by(Load.status)
            )
        }
        events_24h = await conn.scalar(
            select(func.count()).where(
                TrackingEvent.tenant_id == tid, TrackingEvent.occurred_at >= since
            )
        )
    return JSON(
        {
            "tenant_id": tid,
            "shipments": by_status,
            "top_lanes": lanes,
            "invoices": invoices,
            "loads": loads,
            "events_24h": events_24h,
            "computed_at": dt.datetime.now(dt.UTC),
        }
    )


routes = [Route("/api/dashboard", dashboard, methods=["GET"])]
