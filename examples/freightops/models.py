"""FreightOps' tables: SQLAlchemy 2 typed models with indexes that fit the queries.

Every tenant-owned table carries ``tenant_id`` as the first column of its
indexes, because every query the app runs starts with
``WHERE tenant_id = :principal_tenant`` (tenant isolation is a filter on
every statement, never a post-filter in Python). Lists page by
``(tenant_id, id DESC)`` so keyset pagination is an index range scan.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ROLE_PERMISSIONS",
    "SHIPMENT_STATUSES",
    "Base",
    "Carrier",
    "Driver",
    "Invoice",
    "Load",
    "Quote",
    "Rate",
    "Role",
    "Shipment",
    "Tenant",
    "TrackingEvent",
    "User",
]

# SQLite only auto-increments an INTEGER PRIMARY KEY, PostgreSQL wants BIGINT.
Id = BigInteger().with_variant(Integer(), "sqlite")

SHIPMENT_STATUSES = ("pending", "booked", "in_transit", "delivered", "cancelled")
"""A shipment's life cycle, in order (``cancelled`` may follow any but ``delivered``)."""

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset(
        {
            "users:read", "users:write", "tenant:read",
            "shipments:read", "shipments:write", "loads:read", "loads:write",
            "carriers:read", "carriers:write", "drivers:read", "drivers:write",
            "tracking:read", "tracking:write", "quotes:read", "quotes:write",
            "invoices:read", "invoices:write", "dashboard:read",
        }
    ),
    "dispatcher": frozenset(
        {
            "shipments:read", "shipments:write", "loads:read", "loads:write",
            "carriers:read", "drivers:read", "tracking:read", "tracking:write",
            "quotes:read", "quotes:write", "dashboard:read",
        }
    ),
    "driver": frozenset({"shipments:read", "loads:read", "tracking:read", "tracking:write"}),
    "accountant": frozenset(
        {"shipments:read", "carriers:read", "quotes:read", "invoices:read", "invoices:write",
         "dashboard:read"}
    ),
    "viewer": frozenset(
        {"shipments:read", "loads:read", "carriers:read", "drivers:read", "tracking:read",
         "quotes:read", "dashboard:read"}
    ),
}  # fmt: skip
"""RBAC: the permissions each role grants (the ``roles`` table holds the same data,
which the naive profile re-reads on every request)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base of every FreightOps table."""


class Tenant(Base):
    """A customer company; ``plan`` picks its rate limits."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    plan: Mapped[str] = mapped_column(String(20), default="standard")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Role(Base):
    """A role and its space-separated permissions."""

    __tablename__ = "roles"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)
    permissions: Mapped[str] = mapped_column(Text)


class User(Base):
    """A login of one tenant. ``tokens_valid_after`` implements logout-everywhere."""

    __tablename__ = "users"
    __table_args__ = (Index("ix_users_tenant_id", "tenant_id", "id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    email: Mapped[str] = mapped_column(String(200), unique=True)
    full_name: Mapped[str] = mapped_column(String(120))
    password_hash: Mapped[str] = mapped_column(String(200))
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id"))
    is_active: Mapped[bool] = mapped_column(default=True)
    tokens_valid_after: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Carrier(Base):
    """A trucking company the tenant books loads with."""

    __tablename__ = "carriers"
    __table_args__ = (Index("ix_carriers_tenant_name", "tenant_id", "name"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(120))
    mc_number: Mapped[str] = mapped_column(String(20))
    rating: Mapped[float] = mapped_column(Float, default=4.0)


class Driver(Base):
    """A driver of a carrier, optionally a user who logs in."""

    __tablename__ = "drivers"
    __table_args__ = (Index("ix_drivers_tenant_carrier", "tenant_id", "carrier_id", "id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    carrier_id: Mapped[int] = mapped_column(ForeignKey("carriers.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)
    name: Mapped[str] = mapped_column(String(120))
    license_no: Mapped[str] = mapped_column(String(30))
    phone: Mapped[str] = mapped_column(String(30), default="")


class Shipment(Base):
    """A customer's consignment from an origin to a destination."""

    __tablename__ = "shipments"
    __table_args__ = (
        UniqueConstraint("tenant_id", "reference", name="uq_shipments_tenant_reference"),
        # list: WHERE tenant_id = ? [AND id < cursor] ORDER BY id DESC
        Index("ix_shipments_tenant_id_id", "tenant_id", "id"),
        # list filtered by status (the most common filter) and the dashboard's GROUP BY
        Index("ix_shipments_tenant_status_id", "tenant_id", "status", "id"),
        Index("ix_shipments_tenant_carrier_id", "tenant_id", "carrier_id", "id"),
        Index("ix_shipments_tenant_lane", "tenant_id", "origin", "destination"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    reference: Mapped[str] = mapped_column(String(40))
    customer: Mapped[str] = mapped_column(String(120))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    origin: Mapped[str] = mapped_column(String(60))
    destination: Mapped[str] = mapped_column(String(60))
    weight_kg: Mapped[float] = mapped_column(Float)
    carrier_id: Mapped[int | None] = mapped_column(ForeignKey("carriers.id"), default=None)
    pickup_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    delivery_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=_now, onupdate=_now
    )


class Load(Base):
    """One truck movement carrying (part of) a shipment."""

    __tablename__ = "loads"
    __table_args__ = (
        Index("ix_loads_tenant_status_id", "tenant_id", "status", "id"),
        Index("ix_loads_tenant_shipment", "tenant_id", "shipment_id"),
        Index("ix_loads_tenant_driver_id", "tenant_id", "driver_id", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    shipment_id: Mapped[int] = mapped_column(ForeignKey("shipments.id"))
    carrier_id: Mapped[int | None] = mapped_column(ForeignKey("carriers.id"), default=None)
    driver_id: Mapped[int | None] = mapped_column(ForeignKey("drivers.id"), default=None)
    status: Mapped[str] = mapped_column(String(20), default="planned")
    truck: Mapped[str] = mapped_column(String(20), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class TrackingEvent(Base):
    """An append-only event on a shipment's timeline."""

    __tablename__ = "tracking_events"
    __table_args__ = (
        # timeline: WHERE tenant_id = ? AND shipment_id = ? ORDER BY occurred_at, id
        Index("ix_events_tenant_shipment_time", "tenant_id", "shipment_id", "occurred_at"),
        Index("ix_events_tenant_time", "tenant_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    shipment_id: Mapped[int] = mapped_column(ForeignKey("shipments.id"))
    kind: Mapped[str] = mapped_column(String(30))
    location: Mapped[str] = mapped_column(String(60), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Rate(Base):
    """A lane's price: ``base_cents + per_kg_cents * weight``."""

    __tablename__ = "rates"
    __table_args__ = (UniqueConstraint("tenant_id", "origin", "destination", name="uq_rates_lane"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    origin: Mapped[str] = mapped_column(String(60))
    destination: Mapped[str] = mapped_column(String(60))
    base_cents: Mapped[int] = mapped_column(Integer)
    per_kg_cents: Mapped[int] = mapped_column(Integer)


class Quote(Base):
    """A price offered to a customer for a lane and weight."""

    __tablename__ = "quotes"
    __table_args__ = (Index("ix_quotes_tenant_id", "tenant_id", "id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    customer: Mapped[str] = mapped_column(String(120))
    origin: Mapped[str] = mapped_column(String(60))
    destination: Mapped[str] = mapped_column(String(60))
    weight_kg: Mapped[float] = mapped_column(Float)
    price_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Invoice(Base):
    """A bill for a delivered shipment."""

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("tenant_id", "number", name="uq_invoices_tenant_number"),
        Index("ix_invoices_tenant_status_id", "tenant_id", "status", "id"),
        Index("ix_invoices_tenant_shipment", "tenant_id", "shipment_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    shipment_id: Mapped[int] = mapped_column(ForeignKey("shipments.id"))
    number: Mapped[str] = mapped_column(String(40))
    amount_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    status: Mapped[str] = mapped_column(String(20), default="open")
    issued_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    due_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
