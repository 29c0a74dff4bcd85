"""The connection budget: ``freightscale check-config`` and the startup warning.

The worst case one server sees is ``instances x workers x (pool_size +
max_overflow)``. For the primary and each replica it is compared with
``connection_budget`` and, when the server answers, with its
``max_connections`` minus ``superuser_reserved_connections``::

    $ freightscale check-config --instances 4 --workers 2
    server     url                 worst case  budget  server limit  status
    primary    db1:5432/freight    120         90      97            OVER: ...
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass, field

from sqlalchemy.engine import make_url

from freightscale.exceptions import ConfigurationError
from freightscale.settings.database import DatabaseSettings

__all__ = [
    "BudgetReport",
    "ServerBudget",
    "check_budget",
    "configure",
    "run",
    "warn_if_over_budget",
]

logger = logging.getLogger("freightscale.db")

_FIX = (
    "lower FREIGHTSCALE_DATABASE__POOL_SIZE / __MAX_OVERFLOW, run fewer "
    "__INSTANCES / __WORKERS, or put PgBouncer in front"
)


@dataclass(slots=True)
class ServerBudget:
    """The budget of one database server.

    Attributes:
        name: ``primary`` or ``replica-N``.
        address: host:port/database (no credentials).
        worst_case: most connections the deployment may open to it.
        budget: the configured ``connection_budget``.
        max_connections: the server's ``max_connections`` (None: not queried / unreachable).
        reserved: the server's ``superuser_reserved_connections``.
        error: why the server could not be queried, if it could not.
        problems: what is over, each naming the settings to change.
    """

    name: str
    address: str
    worst_case: int
    budget: int
    max_connections: int | None = None
    reserved: int = 0
    error: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def server_limit(self) -> int | None:
        """Connections ordinary roles may open: ``max_connections - reserved``."""
        if self.max_connections is None:
            return None
        return self.max_connections - self.reserved


@dataclass(slots=True)
class BudgetReport:
    """The budget check of every server of one configuration."""

    formula: str
    servers: list[ServerBudget]

    @property
    def ok(self) -> bool:
        """True when no server is over its budget or its limit."""
        return not any(server.problems for server in self.servers)

    @property
    def problems(self) -> list[str]:
        """Every problem, one line each."""
        return [p for server in self.servers for p in server.problems]

    def raise_for_problems(self) -> None:
        """Raise :class:`ConfigurationError` listing the problems, if any."""
        if not self.ok:
            raise ConfigurationError("connection budget exceeded:\n  " + "\n  ".join(self.problems))


def _address(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite:{parsed.database or ':memory:'}"
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


async def _server_limits(url: str, timeout: float) -> tuple[int, int]:
    import asyncpg  # type: ignore[import-untyped]

    parsed = make_url(url)
    conn = await asyncpg.connect(
        host=parsed.host,
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database,
        timeout=timeout,
        command_timeout=timeout,
        server_settings={"application_name": "freightscale-check-config"},
    )
    try:
        row = await conn.fetchrow(
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int"
        )
    finally:
        await conn.close(timeout=timeout)
    assert row is not None
    return int(row[0]), int(row[1])


async def check_budget(
    settings: DatabaseSettings,
    *,
    instances: int | None = None,
    workers: int | None = None,
    query_servers: bool = True,
    timeout: float = 3.0,
) -> BudgetReport:
    """Compute the worst case per server and compare it with the budget and the server.

    Args:
        settings: the ``database`` settings.
        instances: override ``settings.instances``.
        workers: override ``settings.workers``.
        query_servers: ask each PostgreSQL server for ``max_connections``.
        timeout: seconds per server query (an unreachable server is reported, not fatal).
    """
    n_instances = instances if instances is not None else settings.instances
    n_workers = workers if workers is not None else settings.workers
    per_process = settings.max_per_process
    worst = n_instances * n_workers * per_process
    formula = (
        f"instances {n_instances} x workers {n_workers} x "
        f"(pool_size {settings.pool_size} + max_overflow {settings.max_overflow}) = {worst}"
    )
    urls = [("primary", settings.effective_url)] + [
        (f"replica-{i}", url.get_secret_value()) for i, url in enumerate(settings.replica_urls)
    ]
    servers = [
        ServerBudget(
            name=name, address=_address(url), worst_case=worst, budget=settings.connection_budget
        )
        for name, url in urls
    ]
    if query_servers and not settings.is_sqlite:
        results = await asyncio.gather(
            *(asyncio.wait_for(_server_limits(url, timeout), timeout + 1) for _, url in urls),
            return_exceptions=True,
        )
        for server, result in zip(servers, results, strict=True):
            if isinstance(result, BaseException):
                server.error = f"unreachable ({type(result).__name__})"
            else:
                server.max_connections, server.reserved = result
    for server in servers:
        if settings.is_sqlite:
            continue
        if worst > server.budget:
            server.problems.append(
                f"{server.name} ({server.address}): worst case {formula} exceeds "
                f"FREIGHTSCALE_DATABASE__CONNECTION_BUDGET={server.budget}; {_FIX}"
            )
        limit = server.server_limit
        if limit is not None and worst > limit:
            server.problems.append(
                f"{server.name} ({server.address}): worst case {worst} exceeds the server's "
                f"max_connections {server.max_connections} - {server.reserved} reserved = {limit}; "
                f"{_FIX}, or raise max_connections in postgresql.conf"
            )
    return BudgetReport(formula=formula, servers=servers)


async def warn_if_over_budget(
    settings: DatabaseSettings, *, query_servers: bool = True, timeout: float = 2.0
) -> BudgetReport:
    """The startup check: log one warning per problem and return the report.

    Never raises for an over-budget or unreachable server: start-up goes on.
    """
    report = await check_budget(settings, query_servers=query_servers, timeout=timeout)
    for problem in report.problems:
        logger.warning("connection budget: %s", problem)
    return report


def _render(report: BudgetReport) -> str:
    header = ("server", "address", "worst case", "budget", "server limit", "status")
    rows = []
    for s in report.servers:
        if s.server_limit is not None:
            limit = f"{s.server_limit} ({s.max_connections}-{s.reserved})"
        else:
            limit = s.error or ("n/a" if s.address.startswith("sqlite") else "not queried")
        status = "OVER" if s.problems else "ok"
        rows.append((s.name, s.address, str(s.worst_case), str(s.budget), limit, status))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    out = [f"connection budget: {report.formula} per server", "", *lines, ""]
    if report.ok:
        out.append("OK: every server is within its budget.")
    else:
        out.append("OVER BUDGET:")
        out.extend(f"  - {p}" for p in report.problems)
    return "\n".join(out)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``check-config``'s arguments."""
    parser.description = (
        "Check the database connection budget: instances x workers x "
        "(pool_size + max_overflow) per server against FREIGHTSCALE_DATABASE__CONNECTION_BUDGET "
        "and each server's max_connections. Settings come from FREIGHTSCALE_* variables."
    )
    parser.add_argument("--instances", type=int, help="override FREIGHTSCALE_DATABASE__INSTANCES")
    parser.add_argument("--workers", type=int, help="override FREIGHTSCALE_DATABASE__WORKERS")
    parser.add_argument(
        "--no-query", action="store_true", help="do not connect to the servers for max_connections"
    )
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds per server query (default 3)"
    )


def run(args: argparse.Namespace) -> int:
    """Print the budget table; exit 1 when over budget, 2 on invalid settings."""
    from freightscale.settings import FreightScaleSettings

    for flag in ("instances", "workers"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            print(f"error: --{flag} must be >= 1, got {value}")
            return 2
    try:
        settings = FreightScaleSettings().database
    except ConfigurationError as exc:
        print(f"error: {exc}")
        return 2
    report = asyncio.run(
        check_budget(
            settings,
            instances=args.instances,
            workers=args.workers,
            query_servers=not args.no_query,
            timeout=args.timeout,
        )
    )
    print(_render(report))
    return 0 if report.ok else 1
