"""Cost of the event-loop lag monitor: requests/s with the monitor off vs on.

A small Starlette JSON route is driven in-process through the ASGI interface
(no network: the figure is the monitor's overhead, not server noise). Variants,
interleaved over several rounds:

* ``bare``      the app alone;
* ``off``       wrapped in LoopMonitorMiddleware with the monitor disabled;
* ``on``        monitor on with the default settings (probe every 0.5 s);
* ``on-10ms``   monitor on, probing every 10 ms (50x the default rate).

The histogram is recorded through the real OpenTelemetry SDK (an in-memory
reader), so ``record()`` costs what it costs in production. Prints requests/s
and process CPU per request for each variant with the ratio to ``bare``
measured in the same run, then the CPU the process burns on an idle loop with
the monitor off and on (the monitor's absolute cost: probe + watchdog).

    python bench/loopmonitor_bench.py [--requests 4000] [--rounds 8] [--idle 2]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.loopmonitor import LoopMonitorMiddleware
from freightscale.settings.loopmonitor import LoopMonitorSettings


async def shipment(request: Request) -> JSONResponse:
    return JSONResponse(
        {"id": request.path_params["id"], "status": "in_transit", "eta": "2026-12-01T10:00:00Z"}
    )


def build() -> Starlette:
    return Starlette(routes=[Route("/shipments/{id:int}", shipment)])


async def drive(app: Any, requests: int) -> tuple[float, float]:
    """Return (requests per wall-clock second, CPU microseconds per request).

    CPU time is the whole process's (all threads, the watchdog included), which
    on a shared, busy machine is steadier than wall-clock time.
    """
    scope_base = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "root_path": "", "query_string": b"", "headers": [],
        "server": ("bench", 80), "client": ("127.0.0.1", 1),
        "path": "/shipments/42", "raw_path": b"/shipments/42",
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(requests):
        await app(dict(scope_base), receive, send)
        if not i % 20:
            # A server's loop turns over between requests (socket I/O); this driver
            # would otherwise hold the loop for the whole round and starve the probe.
            await asyncio.sleep(0)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert set(statuses) == {200}, set(statuses)
    return requests / elapsed, cpu / requests * 1e6


async def idle_cpu(app: Any, seconds: float) -> float:
    """CPU seconds per wall second the process burns on an idle loop (monitor's own cost)."""
    monitor = getattr(app, "monitor", None)
    if monitor is not None and monitor.settings.enabled:
        monitor.start()
    cpu_start = time.process_time()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu_start
    if monitor is not None:
        await monitor.aclose()
    return cpu / seconds


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--idle", type=float, default=2.0, help="seconds of idle loop per variant")
    args = parser.parse_args()
    stalls = _Count()
    stall_log = logging.getLogger("freightscale.loopmonitor")
    stall_log.addHandler(stalls)
    stall_log.propagate = False
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    on = LoopMonitorSettings(enabled=True)
    apps: dict[str, Any] = {
        "bare": build(),
        "off": LoopMonitorMiddleware(build(), LoopMonitorSettings(), meter_provider=provider),
        "on": LoopMonitorMiddleware(build(), on, meter_provider=provider),
        "on-10ms": LoopMonitorMiddleware(
            build(), on.model_copy(update={"probe_interval": 0.01}), meter_provider=provider
        ),
    }
    print(f"$ python {' '.join(sys.argv)}")
    print(f"{args.requests} requests/round, {args.rounds} rounds, variants interleaved")
    for app in apps.values():  # warm up; the first request starts an enabled monitor
        await drive(app, 200)
    rates: dict[str, list[float]] = {name: [] for name in apps}
    cpus: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(args.rounds):
        for name, app in apps.items():
            monitor = getattr(app, "monitor", None)
            if monitor is not None and monitor.settings.enabled:
                monitor.start()  # only this variant's monitor runs during its round
            rate, cpu = await drive(app, args.requests)
            rates[name].append(rate)
            cpus[name].append(cpu)
            if monitor is not None:
                await monitor.aclose()
    base_rate, base_cpu = statistics.median(rates["bare"]), statistics.median(cpus["bare"])
    print("  variant   req/s (median, min-max over rounds)   x vs bare | CPU us/req   x vs bare")
    for name in apps:
        rate, cpu = statistics.median(rates[name]), statistics.median(cpus[name])
        spread = f"{min(rates[name]):.0f}-{max(rates[name]):.0f}"
        print(
            f"  {name:8s} {rate:7.0f} ({spread:>11s})  x{rate / base_rate:5.3f}"
            f"  | {cpu:7.1f}  x{cpu / base_cpu:5.3f}"
        )
    print(f"idle loop, {args.idle:.1f} s per variant: process CPU time per second of wall time")
    for name in ("bare", "on", "on-10ms"):
        share = await idle_cpu(apps[name], args.idle)
        print(f"  {name:8s} {share * 1e3:7.3f} ms CPU per s ({share:.4%} of one core)")
    print(f"stall warnings logged by the monitor during the run: {stalls.count}")
    provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
