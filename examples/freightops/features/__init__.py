"""FreightOps' routes, one module per feature (never one 13,000-line file).

Each module exposes ``routes``; :func:`all_routes` collects them in order.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from examples.freightops.features import (
    admin,
    auth,
    carriers,
    dashboard,
    drivers,
    invoices,
    loads,
    quotes,
    shipments,
    tracking,
)

__all__ = ["all_routes"]

MODULES = (auth, admin, shipments, tracking, loads, carriers, drivers, quotes, invoices, dashboard)


def all_routes() -> list[BaseRoute]:
    """Every feature's routes."""
    return [route for module in MODULES for route in module.routes]
