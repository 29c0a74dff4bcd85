"""Run in a subprocess by test_metrics: installs an OpenTelemetry SDK reader first.

The global MeterProvider can be set once per process, so the metrics test
gets a process of its own. Prints the collected data points as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

import httpx  # noqa: E402

from freightscale.ratelimit import RateLimitMiddleware  # noqa: E402
from freightscale.settings.ratelimit import RateLimitSettings, RouteLimit  # noqa: E402


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def main() -> None:
    settings = RateLimitSettings(
        default="2/minute",
        key="ip",
        routes=(RouteLimit(path="/shadow", limits="1/minute", shadow=True, name="beta"),),
        timeout=0.2,
        retry_interval=60,
    )
    # an unreachable Redis: every check fails over, counting storage errors
    mw = RateLimitMiddleware(app, settings, redis=sys.argv[1])
    transport = httpx.ASGITransport(app=mw, client=("192.0.2.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for _ in range(3):
            await client.get("/")
        for _ in range(2):
            await client.get("/shadow")
    await mw.aclose()
    points = []
    data = reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    points.append([metric.name, dict(p.attributes), p.value])
    print(json.dumps(points))


asyncio.run(main())
