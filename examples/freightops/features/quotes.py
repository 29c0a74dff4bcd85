"""Rates (the tenant's price per lane) and the quotes computed from them."""

from __future__ import annotations

from sqlalchemy import insert, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from examples.freightops.models import Quote, Rate
from examples.freightops.runtime import services
from examples.freightops.web import (
    JSON,
    Body,
    Problem,
    body,
    cached,
    invalidate,
    keyset_page,
    tenant_id,
)
from freightscale.auth import require_permission

__all__ = ["price_cents", "routes"]


class QuoteRequest(Body):
    customer: str
    origin: str
    destination: str
    weight_kg: float


def price_cents(base_cents: int, per_kg_cents: int, weight_kg: float) -> int:
    """A lane's price for a weight, rounded to the cent."""
    return base_cents + round(per_kg_cents * weight_kg)


@require_permission("quotes:read")
@cached(["rates"])
async def list_rates(request: Request) -> Response:
    """``GET /api/rates``: the tenant's lanes and prices."""
    stmt = select(Rate.id, Rate.origin, Rate.destination, Rate.base_cents, Rate.per_kg_cents).where(
        Rate.tenant_id == tenant_id(request)
    )
    async with services(request).reader() as conn:
        return JSON(await keyset_page(request, conn, stmt, Rate.id))


@require_permission("quotes:read")
@cached(["quotes"])
async def list_quotes(request: Request) -> Response:
    """``GET /api/quotes``."""
    stmt = select(
        Quote.id,
        Quote.customer,
        Quote.origin,
        Quote.destination,
        Quote.weight_kg,
        Quote.price_cents,
        Quote.currency,
        Quote.created_at,
    ).where(Quote.tenant_id == tenant_id(request))
    async with services(request).reader() as conn:
        return JSON(await keyset_page(request, conn, stmt, Quote.id))


@require_permission("quotes:write")
async def create_quote(request: Request) -> Response:
    """``POST /api/quotes``: price a lane and weight from the rate table."""
    data = await body(request, QuoteRequest)
    if not 0 < data.weight_kg <= 100_000:
        raise Problem(422, "weight_kg must be in (0, 100000]")
    tid = tenant_id(request)
    # Two single statements, no transaction: the rate read and the insert
    # need not be atomic (a quote prices the lane as it was when asked).
    async with services(request).autocommit() as conn:
        rate = (
            await conn.execute(
                select(Rate.base_cents, Rate.per_kg_cents).where(
                    Rate.tenant_id == tid,
                    Rate.origin == data.origin,
                    Rate.destination == data.destination,
                )
            )
        ).one_or_none()
        if rate is None:
            raise Problem(422, f"no rate for the lane {data.origin} → {data.destination}")
        price = price_cents(rate.base_cents, rate.per_kg_cents, data.weight_kg)
        new_id = await conn.scalar(
            insert(Quote)
            .values(
                tenant_id=tid,
                customer=data.customer[:120],
                origin=data.origin,
                destination=data.destination,
                weight_kg=data.weight_kg,
                price_cents=price,
            )
            .returning(Quote.id)
        )
    await invalidate(request, "quotes")
    return JSON({"id": new_id, "price_cents": price, "currency": "EUR"}, status_code=201)


routes = [
    Route("/api/rates", list_rates, methods=["GET"]),
    Route("/api/quotes", list_quotes, methods=["GET"]),
    Route("/api/quotes", create_quote, methods=["POST"]),
]
