"""Invoices for delivered shipments (accountants and admins)."""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from examples.freightops.models import Invoice, Shipment
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
    Invoice.id,
    Invoice.shipment_id,
    Invoice.number,
    Invoice.amount_cents,
    Invoice.currency,
    Invoice.status,
    Invoice.issued_at,
    Invoice.due_at,
)
INVOICE_STATUSES = ("open", "paid", "void")


class NewInvoice(Body):
    shipment_id: int
    amount_cents: int
    due_days: int = 30


@require_permission("invoices:read")
@cached(["invoices"])
async def list_invoices(request: Request) -> Response:
    """``GET /api/invoices?status=``."""
    stmt = select(*_COLUMNS).where(Invoice.tenant_id == tenant_id(request))
    status = request.query_params.get("status")
    if status:
        if status not in INVOICE_STATUSES:
            raise Problem(400, f"status must be one of {', '.join(INVOICE_STATUSES)}")
        stmt = stmt.where(Invoice.status == status)
    async with services(request).reader() as conn:
        return JSON(await keyset_page(request, conn, stmt, Invoice.id))


@require_permission("invoices:read")
async def invoice_detail(request: Request) -> Response:
    """``GET /api/invoices/{id}``."""
    stmt = select(*_COLUMNS).where(
        Invoice.id == int_param(request, "invoice_id"), Invoice.tenant_id == tenant_id(request)
    )
    async with services(request).reader() as conn:
        return JSON(await fetch_one(conn, stmt, "invoice"))


@require_permission("invoices:write")
async def create_invoice(request: Request) -> Response:
    """``POST /api/invoices``: bill a delivered shipment."""
    data = await body(request, NewInvoice)
    if not 0 < data.amount_cents <= 10**10 or not 0 <= data.due_days <= 365:
        raise Problem(422, "amount_cents must be positive and due_days in [0, 365]")
    tid = tenant_id(request)
    now = dt.datetime.now(dt.UTC)
    number = f"INV-{now:%Y%m}-{secrets.token_hex(4).upper()}"
    try:
        async with services(request).writer() as conn:
            status = await conn.scalar(
                select(Shipment.status).where(
                    Shipment.id == data.shipment_id, Shipment.tenant_id == tid
                )
            )
            if status is None:
                raise Problem(422, "no such shipment")
            if status != "delivered":
                raise Problem(409, f"only delivered shipments are invoiced (this one is {status})")
            new_id = await conn.scalar(
                insert(Invoice)
                .values(
                    tenant_id=tid,
                    shipment_id=data.shipment_id,
                    number=number,
                    amount_cents=data.amount_cents,
                    issued_at=now,
                    due_at=now + dt.timedelta(days=data.due_days),
                )
                .returning(Invoice.id)
            )
    except IntegrityError:
        raise Problem(409, "invoice number collision, retry") from None
    await invalidate(request, "invoices", f"shipment:{data.shipment_id}")
    return JSON({"id": new_id, "number": number, "status": "open"}, status_code=201)


routes = [
    Route("/api/invoices", list_invoices, methods=["GET"]),
    Route("/api/invoices", create_invoice, methods=["POST"]),
    Route("/api/invoices/{invoice_id:int}", invoice_detail, methods=["GET"]),
]
