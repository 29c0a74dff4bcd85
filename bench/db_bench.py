"""Database pool benchmark: statement cache on vs off, pooled vs NullPool.

Runs the same parameterized query (a two-table join looked up by primary
key) from N concurrent clients, each "request" checking out a session,
executing the query and closing the session, in three modes:

  pooled+cache    freightscale defaults (pool 10+5, statement cache 100)   baseline
  pooled-nocache  same pool, statement caches off (pgbouncer_transaction_mode)
  nullpool        a fresh connection per request (NullPool), cache on

and prints requests/s, p50/p95 latency and the ratio to the baseline, all
measured in the same run. Modes are interleaved over several rounds so a
noisy neighbour hurts all of them alike.

By default it starts its own throwaway PostgreSQL (as the ``postgres`` user,
like the tests), so 50 NullPool connections never crowd a shared server::

    python bench/db_bench.py                      # own server, 50 clients
    python bench/db_bench.py --url postgresql+asyncpg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from freightscale.db.engines import engine_options  # noqa: E402
from freightscale.settings.database import DatabaseSettings  # noqa: E402

QUERY = text(
    "SELECT o.id, o.status, o.total, c.name, c.country "
    "FROM bench_orders o JOIN bench_customers c ON c.id = o.customer_id "
    "WHERE o.id = :id AND o.status <> :skip"
)
ROWS = 20_000


async def setup_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS bench_orders, bench_customers"))
        await conn.execute(
            text("CREATE TABLE bench_customers (id int PRIMARY KEY, name text, country text)")
        )
        await conn.execute(
            text(
                "CREATE TABLE bench_orders (id int PRIMARY KEY, customer_id int "
                "REFERENCES bench_customers(id), status text, total numeric(12,2))"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO bench_customers SELECT g, 'customer ' || g, 'C' || (g % 50) "
                "FROM generate_series(1, 1000) g"
            )
        )
        await conn.execute(
            text(
                f"INSERT INTO bench_orders SELECT g, 1 + g % 1000, "
                f"(ARRAY['new','paid','shipped'])[1 + g % 3], g * 1.5 "
                f"FROM generate_series(1, {ROWS}) g"
            )
        )
        await conn.execute(text("ANALYZE bench_orders"))
        await conn.execute(text("ANALYZE bench_customers"))


def build(url: str, mode: str) -> AsyncEngine:
    settings = DatabaseSettings(
        url=url,
        application_name=f"fs-bench-{mode}",
        pgbouncer_transaction_mode=(mode == "pooled-nocache"),
    )
    options: dict[str, Any] = engine_options(settings, url, name=mode)
    if mode == "nullpool":
        for key in ("pool_size", "max_overflow", "pool_timeout"):
            options.pop(key, None)
        options["poolclass"] = NullPool
    return create_async_engine(url, **options)


async def run_mode(engine: AsyncEngine, clients: int, seconds: float) -> tuple[int, list[float]]:
    maker = async_sessionmaker(engine, expire_on_commit=False)
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    counter = 0

    async def client(seed: int) -> None:
        nonlocal counter
        i = seed
        while time.perf_counter() < stop:
            i = (i * 7919 + 13) % ROWS + 1
            started = time.perf_counter()
            async with maker() as session:
                row = (await session.execute(QUERY, {"id": i, "skip": "void"})).one()
                assert row[0] == i
            latencies.append(time.perf_counter() - started)
            counter += 1

    await asyncio.gather(*(client(n) for n in range(clients)))
    return counter, latencies


async def main(args: argparse.Namespace) -> None:
    cluster = None
    url = args.url
    if url is None:
        from tests.pg_servers import PgCluster

        cluster = PgCluster.start(replica=False, max_connections=args.clients + 40)
        url = cluster.primary.url
    try:
        setup_engine = create_async_engine(url)
        await setup_schema(setup_engine)
        await setup_engine.dispose()
        modes = ["pooled+cache", "pooled-nocache", "nullpool"]
        totals = {m: 0 for m in modes}
        elapsed = {m: 0.0 for m in modes}
        lat: dict[str, list[float]] = {m: [] for m in modes}
        engines = {m: build(url, m) for m in modes}
        for mode in modes:  # warm-up: fill pools, plan caches, imports
            await run_mode(engines[mode], args.clients, 0.5)
        for _ in range(args.rounds):
            for mode in modes:
                started = time.perf_counter()
                n, latencies = await run_mode(engines[mode], args.clients, args.seconds)
                elapsed[mode] += time.perf_counter() - started
                totals[mode] += n
                lat[mode].extend(latencies)
        for engine in engines.values():
            await engine.dispose()
    finally:
        if cluster is not None:
            cluster.destroy()

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    print(f"command: {command}")
    print(
        f"server: {'own throwaway PostgreSQL 15' if cluster else 'given --url'}; "
        f"clients: {args.clients}; {args.rounds} rounds x {args.seconds}s per mode; "
        f"cpus: {os.cpu_count()}"
    )
    base = totals["pooled+cache"] / elapsed["pooled+cache"]
    print(f"{'mode':<16}{'requests':>10}{'req/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'vs baseline':>13}")
    for mode in ("pooled+cache", "pooled-nocache", "nullpool"):
        rps = totals[mode] / elapsed[mode]
        ordered = sorted(lat[mode])
        p50 = statistics.median(ordered) * 1000
        p95 = ordered[int(len(ordered) * 0.95)] * 1000
        print(f"{mode:<16}{totals[mode]:>10}{rps:>10.0f}{p50:>9.1f}{p95:>9.1f}{rps / base:>12.2f}x")
    nocache = totals["pooled-nocache"] / elapsed["pooled-nocache"]
    null = totals["nullpool"] / elapsed["nullpool"]
    print(f"statement cache on vs off: {base / nocache:.2f}x")
    print(f"pooled vs NullPool:        {base / null:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="SQLAlchemy URL (default: start an own throwaway server)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=3.0, help="per mode per round")
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
