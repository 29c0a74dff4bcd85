"""Pool and replica metrics through an OpenTelemetry SDK reader (no global provider)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from freightscale.db import Database
from tests.pg_servers import PgCluster


def collect(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    data = reader.get_metrics_data()
    out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = point.count  # type: ignore[union-attr]
                    out.setdefault(metric.name, []).append((dict(point.attributes or {}), value))
    return out


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


async def test_pool_gauges_wait_histogram_and_timeouts(
    database_url: str, make_database: Callable[..., Database], reader: InMemoryMetricReader
) -> None:
    provider = MeterProvider(metric_readers=[reader])
    db = make_database(
        url=database_url, pool_size=1, max_overflow=1, pool_timeout=0.1, meter_provider=provider
    )
    primary_attrs = {"db.role": "primary", "db.pool.name": "primary"}
    async with db.engines.primary.connect() as c1, db.engines.primary.connect() as c2:
        await c1.execute(text("SELECT 1"))
        await c2.execute(text("SELECT 1"))
        metrics = collect(reader)
        assert (primary_attrs, 2) in metrics["freightscale.db.pool.connections.in_use"]
        assert (primary_attrs, 1) in metrics["freightscale.db.pool.connections.overflow"]
        with pytest.raises(sa_exc.TimeoutError):
            async with db.engines.primary.connect():
                pass
    metrics = collect(reader)
    assert (primary_attrs, 0) in metrics["freightscale.db.pool.connections.in_use"]
    assert (primary_attrs, 1) in metrics["freightscale.db.pool.connections.idle"]
    assert (primary_attrs, 1) in metrics["freightscale.db.pool.checkout.timeouts"]
    waits = dict(
        (tuple(sorted(a.items())), v) for a, v in metrics["freightscale.db.pool.checkout.wait"]
    )
    assert waits[tuple(sorted(primary_attrs.items()))] >= 2
    provider.shutdown()


async def test_replica_lag_and_health_gauges(
    pg_cluster: PgCluster, make_database: Callable[..., Database], reader: InMemoryMetricReader
) -> None:
    assert pg_cluster.replica is not None
    provider = MeterProvider(metric_readers=[reader])
    db = make_database(
        url=pg_cluster.primary.url,
        replica_urls=[pg_cluster.replica.url, "postgresql+asyncpg://postgres@127.0.0.1:1/x"],
        connect_timeout=1,
        meter_provider=provider,
    )
    with anyio.fail_after(10):
        await db.replicas.check_all()
    metrics = collect(reader)
    healthy = {a["db.pool.name"]: v for a, v in metrics["freightscale.db.replica.healthy"]}
    assert healthy == {"replica-0": 1, "replica-1": 0}
    lag = {a["db.pool.name"]: v for a, v in metrics["freightscale.db.replica.lag"]}
    assert lag["replica-0"] >= 0
    assert "replica-1" not in lag
    assert all(a["db.role"] == "replica" for a, _ in metrics["freightscale.db.replica.healthy"])
    provider.shutdown()


async def test_unavailable_counter(
    database_url: str, make_database: Callable[..., Database], reader: InMemoryMetricReader
) -> None:
    import httpx

    from freightscale.db import DatabaseSessionMiddleware, get_session

    provider = MeterProvider(metric_readers=[reader])
    db = make_database(
        url=database_url, pool_size=1, max_overflow=0, pool_timeout=0.1, meter_provider=provider
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await get_session(scope).execute(text("SELECT 1"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = DatabaseSessionMiddleware(app, database=db)
    transport = httpx.ASGITransport(wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        async with db.engines.primary.connect() as hog:
            await hog.execute(text("SELECT 1"))
            assert (await http.get("/")).status_code == 503
        assert (await http.get("/")).status_code == 200
    metrics = collect(reader)
    assert ({"db.pool.name": "primary", "reason": "pool_timeout"}, 1) in metrics[
        "freightscale.db.unavailable"
    ]
    provider.shutdown()
