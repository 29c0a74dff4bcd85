"""Schema creation and a fast, deterministic demo-data generator.

    python -m examples.freightops.seed --tenants 5 --users 200 --shipments 100000

The database comes from ``--database-url`` or ``FREIGHTSCALE_DATABASE__URL``
(the embedded SQLite file when neither is set). Rows are generated in Python
with explicit ids and loaded with PostgreSQL ``COPY`` (asyncpg) or batched
``executemany`` on SQLite, so 100k shipments with ~400k events load in
seconds. The same ``--seed`` gives the same data.

Demo logins: ``<role>@<tenant>.example`` / ``freightops`` (for example
``admin@acme.example``, ``dispatcher@acme.example``, ``driver@globex.example``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from examples.freightops.models import (
    ROLE_PERMISSIONS,
    Base,
    Carrier,
    Driver,
    Invoice,
    Load,
    Quote,
    Rate,
    Role,
    Shipment,
    Tenant,
    TrackingEvent,
    User,
)
from examples.freightops.security import hash_password

__all__ = ["DEMO_PASSWORD", "SeedPlan", "create_schema", "prepare_database", "seed"]

logger = logging.getLogger("freightops.seed")

DEMO_PASSWORD = "freightops"
TENANT_NAMES = [
    ("acme", "Acme Logistics", "enterprise"),
    ("globex", "Globex Freight", "standard"),
    ("initech", "Initech Hauling", "standard"),
    ("umbrella", "Umbrella Transport", "free"),
    ("stark", "Stark Cargo", "enterprise"),
]
CITIES = [
    "Hamburg", "Rotterdam", "Antwerp", "Berlin", "Munich", "Paris", "Lyon", "Milan",
    "Madrid", "Barcelona", "Vienna", "Prague", "Warsaw", "Budapest", "Zurich", "Brussels",
]  # fmt: skip
CUSTOMERS = [
    "Nordwind GmbH", "Blue Harbor BV", "Cargo Bros", "Delta Foods", "Evergreen Paper",
    "Falcon Parts", "Granite Tools", "Helix Pharma", "Iris Textiles", "Juno Retail",
]  # fmt: skip
ROLE_SHARE = (("admin", 0.05), ("dispatcher", 0.30), ("driver", 0.35), ("accountant", 0.10))
STATUS_SHARE = (("delivered", 0.55), ("in_transit", 0.15), ("booked", 0.10), ("pending", 0.12))
BATCH = 5_000


@dataclass(frozen=True)
class SeedPlan:
    """How much data to generate (the defaults are the small test/demo size)."""

    tenants: int = 2
    users: int = 20
    shipments: int = 200
    carriers_per_tenant: int = 8
    quotes: int = 50
    seed: int = 42
    password_iterations: int = 120_000


async def create_schema(engine: AsyncEngine, *, drop: bool = False) -> None:
    """Create every table and index (dropping them first with ``drop``), and the roles."""
    async with engine.begin() as conn:
        if drop:
            await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
        if not await conn.scalar(select(func.count()).select_from(Role)):
            await conn.execute(
                insert(Role),
                [
                    {"id": i, "name": name, "permissions": " ".join(sorted(perms))}
                    for i, (name, perms) in enumerate(ROLE_PERMISSIONS.items(), start=1)
                ],
            )


async def prepare_database(engine: AsyncEngine, *, shipments: int = 2_000) -> bool:
    """Create the schema and seed demo data if there is none yet; True if it seeded."""
    await create_schema(engine)
    async with engine.connect() as conn:
        if await conn.scalar(select(func.count()).select_from(Tenant)):
            return False
    await seed(engine, SeedPlan(tenants=5, users=60, shipments=shipments, quotes=200))
    return True


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def _role_counts(users_per_tenant: int) -> list[tuple[str, int]]:
    counts = [(role, max(1, round(users_per_tenant * share))) for role, share in ROLE_SHARE]
    viewers = max(1, users_per_tenant - sum(n for _, n in counts))
    return [*counts, ("viewer", viewers)]


def _tenants(n: int) -> list[tuple[str, str, str]]:
    extra = [(f"tenant{i}", f"Tenant {i} Freight", "standard") for i in range(len(TENANT_NAMES), n)]
    return (TENANT_NAMES + extra)[:n]


def generate(plan: SeedPlan) -> dict[Table, list[dict[str, Any]]]:
    """Generate every row of ``plan`` (deterministic for a given ``plan.seed``)."""
    rng = random.Random(plan.seed)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    role_ids = {name: i for i, name in enumerate(ROLE_PERMISSIONS, start=1)}
    # One hash for every demo user: seed data only (real users get their own salt).
    demo_hash = hash_password(
        DEMO_PASSWORD, iterations=plan.password_iterations, salt=b"freightops-demo!"
    )
    rows: dict[Table, list[dict[str, Any]]] = {
        _table(t): []
        for t in (
            Tenant,
            User,
            Carrier,
            Driver,
            Rate,
            Shipment,
            Load,
            TrackingEvent,
            Quote,
            Invoice,
        )
    }
    tenants = _tenants(plan.tenants)
    per_tenant_users = max(5, plan.users // max(1, len(tenants)))
    ids = {"user": 0, "carrier": 0, "driver": 0, "rate": 0, "shipment": 0, "load": 0}
    ids.update(event=0, quote=0, invoice=0)
    lanes = [(a, b) for a in CITIES[:12] for b in CITIES[:12] if a != b]
    for tid, (slug, name, plan_name) in enumerate(tenants, start=1):
        rows[_table(Tenant)].append(
            {"id": tid, "slug": slug, "name": name, "plan": plan_name, "created_at": now}
        )
        driver_users = []
        for role, count in _role_counts(per_tenant_users):
            for k in range(1, count + 1):
                ids["user"] += 1
                email = f"{role}@{slug}.example" if k == 1 else f"{role}{k}@{slug}.example"
                rows[_table(User)].append(
                    {
                        "id": ids["user"],
                        "tenant_id": tid,
                        "email": email,
                        "full_name": f"{role.title()} {k} of {name}",
                        "password_hash": demo_hash,
                        "role_id": role_ids[role],
                        "is_active": True,
                        "tokens_valid_after": 0.0,
                        "created_at": now,
                    }
                )
                if role == "driver":
                    driver_users.append(ids["user"])
        carrier_ids = []
        for k in range(plan.carriers_per_tenant):
            ids["carrier"] += 1
            carrier_ids.append(ids["carrier"])
            rows[_table(Carrier)].append(
                {
                    "id": ids["carrier"],
                    "tenant_id": tid,
                    "name": f"{rng.choice(CITIES)} Trucking {k + 1}",
                    "mc_number": f"MC{rng.randrange(100000, 999999)}",
                    "rating": round(rng.uniform(2.5, 5.0), 1),
                }
            )
        driver_ids = []
        for k in range(len(driver_users) + plan.carriers_per_tenant):
            ids["driver"] += 1
            driver_ids.append(ids["driver"])
            rows[_table(Driver)].append(
                {
                    "id": ids["driver"],
                    "tenant_id": tid,
                    "carrier_id": rng.choice(carrier_ids),
                    "user_id": driver_users[k] if k < len(driver_users) else None,
                    "name": f"Driver {k + 1}",
                    "license_no": f"DL{rng.randrange(10**7, 10**8)}",
                    "phone": f"+49{rng.randrange(10**9, 10**10)}",
                }
            )
        for origin, destination in lanes:
            ids["rate"] += 1
            rows[_table(Rate)].append(
                {
                    "id": ids["rate"],
                    "tenant_id": tid,
                    "origin": origin,
                    "destination": destination,
                    "base_cents": rng.randrange(20_000, 90_000),
                    "per_kg_cents": rng.randrange(5, 40),
                }
            )
        n_shipments = plan.shipments // len(tenants) + (
            1 if tid <= plan.shipments % len(tenants) else 0
        )
        _shipments(rng, rows, ids, tid, n_shipments, carrier_ids, driver_ids, now)
        for _ in range(plan.quotes // len(tenants)):
            ids["quote"] += 1
            origin, destination = rng.choice(lanes)
            weight = round(rng.uniform(100, 24_000), 1)
            rows[_table(Quote)].append(
                {
                    "id": ids["quote"],
                    "tenant_id": tid,
                    "customer": rng.choice(CUSTOMERS),
                    "origin": origin,
                    "destination": destination,
                    "weight_kg": weight,
                    "price_cents": rng.randrange(30_000, 900_000),
                    "currency": "EUR",
                    "created_at": now - dt.timedelta(days=rng.uniform(0, 90)),
                }
            )
    return rows


def _shipments(
    rng: random.Random,
    rows: dict[Table, list[dict[str, Any]]],
    ids: dict[str, int],
    tid: int,
    count: int,
    carrier_ids: Sequence[int],
    driver_ids: Sequence[int],
    now: dt.datetime,
) -> None:
    statuses = [s for s, _ in STATUS_SHARE] + ["cancelled"]
    weights = [w for _, w in STATUS_SHARE] + [1 - sum(w for _, w in STATUS_SHARE)]
    shipments, events = rows[_table(Shipment)], rows[_table(TrackingEvent)]
    loads, invoices = rows[_table(Load)], rows[_table(Invoice)]
    for k in range(count):
        ids["shipment"] += 1
        sid = ids["shipment"]
        # Older shipments first, so ids grow with time like real data.
        created = now - dt.timedelta(days=365 * (1 - k / max(1, count)), minutes=rng.randrange(600))
        status = rng.choices(statuses, weights)[0]
        if created > now - dt.timedelta(days=3) and status == "delivered":
            status = "in_transit"
        origin, destination = rng.sample(CITIES, 2)
        carrier = rng.choice(carrier_ids) if status != "pending" else None
        delivered = (
            created + dt.timedelta(days=rng.uniform(1, 6)) if status == "delivered" else None
        )
        shipments.append(
            {
                "id": sid,
                "tenant_id": tid,
                "reference": f"SH-{tid}-{k + 1:07d}",
                "customer": rng.choice(CUSTOMERS),
                "status": status,
                "origin": origin,
                "destination": destination,
                "weight_kg": round(rng.uniform(50, 24_000), 1),
                "carrier_id": carrier,
                "pickup_at": created + dt.timedelta(hours=12) if carrier else None,
                "delivery_at": delivered,
                "created_at": created,
                "updated_at": delivered or created,
            }
        )
        steps = ["created"]
        if status in ("booked", "in_transit", "delivered"):
            steps.append("status:booked")
        if status in ("in_transit", "delivered"):
            steps += ["status:in_transit"] + ["checkpoint"] * rng.randrange(0, 4)
        if status == "delivered":
            steps.append("status:delivered")
        if status == "cancelled":
            steps.append("status:cancelled")
        for n, kind in enumerate(steps):
            ids["event"] += 1
            events.append(
                {
                    "id": ids["event"],
                    "tenant_id": tid,
                    "shipment_id": sid,
                    "kind": kind,
                    "location": rng.choice((origin, destination, rng.choice(CITIES))),
                    "note": "",
                    "occurred_at": created + dt.timedelta(hours=7 * n),
                }
            )
        if carrier is not None and status != "cancelled":
            ids["load"] += 1
            loads.append(
                {
                    "id": ids["load"],
                    "tenant_id": tid,
                    "shipment_id": sid,
                    "carrier_id": carrier,
                    "driver_id": rng.choice(driver_ids),
                    "status": "closed" if status == "delivered" else "dispatched",
                    "truck": f"TR-{rng.randrange(1000, 9999)}",
                    "created_at": created,
                }
            )
        if delivered is not None and rng.random() < 0.8:
            ids["invoice"] += 1
            invoices.append(
                {
                    "id": ids["invoice"],
                    "tenant_id": tid,
                    "shipment_id": sid,
                    "number": f"INV-{tid}-{ids['invoice']:07d}",
                    "amount_cents": rng.randrange(30_000, 900_000),
                    "currency": "EUR",
                    "status": rng.choices(("paid", "open", "void"), (0.7, 0.27, 0.03))[0],
                    "issued_at": delivered,
                    "due_at": delivered + dt.timedelta(days=30),
                }
            )


async def seed(engine: AsyncEngine, plan: SeedPlan) -> dict[str, int]:
    """Generate ``plan``'s rows and load them into an empty schema; return row counts."""
    started = time.perf_counter()
    rows = generate(plan)
    if engine.dialect.name == "postgresql":
        await _copy_postgres(engine, rows)
    else:
        async with engine.begin() as conn:
            for table, table_rows in rows.items():
                for chunk in _chunks(table_rows, BATCH):
                    await conn.execute(insert(table), chunk)
    counts = {table.name: len(table_rows) for table, table_rows in rows.items()}
    logger.info("seeded %s in %.1fs", counts, time.perf_counter() - started)
    return counts


async def _copy_postgres(engine: AsyncEngine, rows: dict[Table, list[dict[str, Any]]]) -> None:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        async with driver.transaction():
            for table, table_rows in rows.items():
                if not table_rows:
                    continue
                columns = list(table_rows[0])
                await driver.copy_records_to_table(
                    table.name,
                    records=[tuple(r[c] for c in columns) for r in table_rows],
                    columns=columns,
                )
            # Explicit ids were loaded: move each sequence past them.
            for table in rows:
                await driver.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                    f"COALESCE((SELECT max(id) FROM {table.name}), 0) + 1, false)"
                )
        await conn.execute(text("ANALYZE"))
        await conn.commit()


def _chunks(items: list[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m examples.freightops.seed``: create the schema and load demo data."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None, help="default: FREIGHTSCALE_DATABASE__URL")
    parser.add_argument("--tenants", type=int, default=5)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--shipments", type=int, default=100_000)
    parser.add_argument("--quotes", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--drop", action="store_true", help="drop and recreate every table first")
    args = parser.parse_args(argv)
    if args.database_url is None:
        from freightscale.settings import FreightScaleSettings

        args.database_url = FreightScaleSettings().database.effective_url
    plan = SeedPlan(
        tenants=args.tenants,
        users=args.users,
        shipments=args.shipments,
        quotes=args.quotes,
        seed=args.seed,
    )

    async def run() -> None:
        engine = create_async_engine(args.database_url)
        try:
            await create_schema(engine, drop=args.drop)
            async with engine.connect() as conn:
                if await conn.scalar(select(func.count()).select_from(Tenant)):
                    raise SystemExit("the database already has data: pass --drop to reseed it")
            counts = await seed(engine, plan)
            print("loaded", counts)
        finally:
            await engine.dispose()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


@dataclass(frozen=True)
class LoadUser:
    """A logged-in user for the load test: its token, tenant and shipments it reads."""

    token: str
    tenant_id: int
    user_id: int
    shipment_ids: tuple[int, ...]


async def mint_sessions(
    services: Any,
    count: int,
    *,
    roles: Sequence[str] = ("dispatcher", "admin"),
    ids_per_user: int = 40,
    seed_value: int = 7,
) -> list[LoadUser]:
    """Open ``count`` login sessions exactly as ``POST /api/auth/login`` does.

    The load test needs one token per simulated user; logging 2000 users in
    through PBKDF2 would take minutes of server CPU before measuring
    anything, so the tokens are signed directly with the app's secret
    (freightscale.auth's ``TokenIssuer``; the naive profile also writes the
    session file its tokens name). Users cycle over the seeded users holding ``roles``.
    """
    from examples.freightops.security import issue_token

    issuer = None
    if services.sessions is None:  # the freightscale profile
        from examples.freightops.application import auth_settings
        from freightscale.auth import TokenIssuer

        issuer = TokenIssuer(auth_settings(services.settings, services))
    rng = random.Random(seed_value)
    async with services.engine.connect() as conn:
        users = (
            await conn.execute(
                select(User.id, User.tenant_id, Role.name)
                .join(Role, Role.id == User.role_id)
                .where(Role.name.in_(list(roles)), User.is_active.is_(True))
                .order_by(User.id)
            )
        ).all()
        by_tenant: dict[int, list[int]] = {}
        for user in users:
            if user.tenant_id not in by_tenant:
                ids = await conn.scalars(
                    select(Shipment.id)
                    .where(Shipment.tenant_id == user.tenant_id)
                    .order_by(func.random())
                    .limit(ids_per_user * 10)
                )
                by_tenant[user.tenant_id] = list(ids)
    if not users:
        raise RuntimeError(f"no users with roles {roles}: seed the database first")
    ttl = services.config.token_ttl
    minted = []
    for n in range(count):
        user = users[n % len(users)]
        now = time.time()
        if issuer is not None:
            # The freightscale profile: a bearer token is all an API client needs.
            token = issuer.issue(
                str(user.id), tenant=str(user.tenant_id), roles=[user.name], ttl=ttl
            )
        else:
            session_id = await services.sessions.create(
                {
                    "user_id": user.id,
                    "tenant_id": user.tenant_id,
                    "role": user.name,
                    "created": now,
                    "exp": now + ttl,
                },
                ttl=ttl,
            )
            token, _ = issue_token(
                services.secret,
                user_id=user.id,
                tenant_id=user.tenant_id,
                role=user.name,
                session_id=session_id,
                ttl=ttl,
                now=now,
            )
        pool = by_tenant[user.tenant_id]
        sample = tuple(rng.sample(pool, min(ids_per_user, len(pool)))) if pool else ()
        minted.append(LoadUser(token, user.tenant_id, user.id, sample))
    return minted
