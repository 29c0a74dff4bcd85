"""The event-loop lag monitor, and the blocking-call guard that runs the suite.

Stalls are real: a test coroutine calls ``time.sleep`` on the loop (those
tests opt out of the guard with ``allow_blocking``). Metrics go through the
real OpenTelemetry SDK with an in-memory reader.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from freightscale.loopmonitor import (
    LAG_BUCKETS,
    LAG_METRIC,
    LoopLagMonitor,
    LoopMonitorMiddleware,
    _LogLimiter,
)
from freightscale.settings.loopmonitor import LoopMonitorSettings
from tests.blocking import expect_blocking, synthetic_freightscale_module

ROOT = Path(__file__).resolve().parents[1]
LOGGER = "freightscale.loopmonitor"


def fast(**overrides: Any) -> LoopMonitorSettings:
    """Settings for tests: a quick probe, stalls of a fraction of a second."""
    values: dict[str, Any] = {
        "enabled": True,
        "probe_interval": 0.02,
        "lag_threshold": 0.08,
        "log_interval": 60.0,
    }
    values.update(overrides)
    return LoopMonitorSettings(**values)


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


def lag_points(reader: InMemoryMetricReader) -> list[HistogramDataPoint]:
    data = reader.get_metrics_data()
    points: list[HistogramDataPoint] = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == LAG_METRIC:
                    assert metric.unit == "s"
                    points.extend(p for p in metric.data.data_points)  # type: ignore[misc]
    return points


def watchdogs() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "freightscale-loop-watchdog"]


def block_the_loop_on_purpose(seconds: float) -> None:
    time.sleep(seconds)  # the stall the monitor must catch


async def stall(seconds: float) -> None:
    block_the_loop_on_purpose(seconds)
    await asyncio.sleep(0)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


# --- settings -------------------------------------------------------------------------


def test_settings_default_off_with_bounds() -> None:
    settings = LoopMonitorSettings()
    assert settings.enabled is False
    assert settings.lag_threshold > 0
    assert settings.probe_interval > 0
    with pytest.raises(ValidationError, match="probe_interval"):
        LoopMonitorSettings(probe_interval=0)
    with pytest.raises(ValidationError, match="lag_threshold"):
        LoopMonitorSettings(lag_threshold=3600)
    with pytest.raises(ValidationError, match="log_interval"):
        LoopMonitorSettings(log_interval=-1)


# --- the monitor ----------------------------------------------------------------------


async def test_disabled_monitor_starts_nothing(provider: MeterProvider) -> None:
    monitor = LoopLagMonitor(LoopMonitorSettings(), meter_provider=provider)
    monitor.start()
    assert not monitor.running
    assert watchdogs() == []
    await monitor.aclose()


def test_start_outside_a_running_loop_says_where_to_call_it() -> None:
    with pytest.raises(RuntimeError, match="lifespan startup"):
        LoopLagMonitor(fast()).start()


async def test_idle_loop_records_small_lag_and_logs_nothing(
    provider: MeterProvider, reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    async with LoopLagMonitor(fast(lag_threshold=0.5), meter_provider=provider) as monitor:
        assert monitor.running
        await asyncio.sleep(0.25)
    (point,) = lag_points(reader)
    assert point.count >= 5  # about 12 probes of 20 ms in 250 ms
    assert 0 <= point.min <= point.max < 0.5
    assert warnings_of(caplog) == []


@pytest.mark.allow_blocking
async def test_blocked_loop_logs_one_warning_with_the_blocking_stack(
    provider: MeterProvider, reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    async with LoopLagMonitor(fast(), meter_provider=provider):
        await asyncio.sleep(0.05)
        await stall(0.4)
        await asyncio.sleep(0.06)  # the probe wakes (late) and records
    (record,) = warnings_of(caplog)
    message = record.getMessage()
    assert "event loop blocked" in message
    assert "block_the_loop_on_purpose" in message  # sampled while the loop was stuck
    assert "stall" in message  # ...with its callers
    assert record.threadName == "freightscale-loop-watchdog"  # no logging on the loop
    (point,) = lag_points(reader)
    assert point.max >= 0.3  # the probe was late by most of the 0.4 s stall
    assert tuple(point.explicit_bounds) == LAG_BUCKETS  # the advised buckets are used
    above = list(LAG_BUCKETS).index(0.25) + 1
    assert sum(point.bucket_counts[above:]) >= 1


@pytest.mark.allow_blocking
async def test_stack_sampling_can_be_turned_off(
    provider: MeterProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    async with LoopLagMonitor(fast(sample_stack=False), meter_provider=provider):
        await asyncio.sleep(0.05)
        await stall(0.3)
    (record,) = warnings_of(caplog)
    assert "event loop blocked" in record.getMessage()
    assert "block_the_loop_on_purpose" not in record.getMessage()


@pytest.mark.allow_blocking
async def test_warnings_are_rate_limited(
    provider: MeterProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    async with LoopLagMonitor(fast(log_interval=60), meter_provider=provider):
        for _ in range(3):
            await asyncio.sleep(0.05)
            await stall(0.25)
    assert len(warnings_of(caplog)) == 1
    caplog.clear()
    async with LoopLagMonitor(fast(log_interval=0), meter_provider=provider):
        for _ in range(2):
            await asyncio.sleep(0.05)
            await stall(0.25)
    logged = [r.getMessage() for r in warnings_of(caplog)]
    # Both stalls logged (a busy shared machine may add a genuine stall of its own).
    assert sum("block_the_loop_on_purpose" in m for m in logged) == 2


def test_log_limiter_counts_what_it_held_back() -> None:
    now = [100.0]
    limiter = _LogLimiter(60.0, clock=lambda: now[0])
    assert limiter.allow() == 0
    now[0] += 10
    assert limiter.allow() is None
    assert limiter.allow() is None
    now[0] += 50
    assert limiter.allow() == 2
    assert limiter.allow() is None


@pytest.mark.allow_blocking
async def test_held_back_stalls_are_counted_in_the_next_warning(
    provider: MeterProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    now = [0.0]
    monitor = LoopLagMonitor(fast(log_interval=60), meter_provider=provider, clock=lambda: now[0])
    async with monitor:
        await asyncio.sleep(0.05)
        await stall(0.25)
        await asyncio.sleep(0.05)
        await stall(0.25)
        now[0] = 61.0
        await asyncio.sleep(0.05)
        await stall(0.25)
    first, second = warnings_of(caplog)
    assert "more stall" not in first.getMessage()
    held = re.search(r"(\d+) more stall\(s\) since the last warning", second.getMessage())
    assert held is not None
    assert int(held.group(1)) >= 1  # the second stall (plus any the busy machine caused)


async def test_clean_shutdown_leaves_no_thread_or_task(provider: MeterProvider) -> None:
    before = asyncio.all_tasks()
    monitor = LoopLagMonitor(fast(), meter_provider=provider)
    monitor.start()
    monitor.start()  # idempotent
    assert len(watchdogs()) == 1
    assert len(asyncio.all_tasks() - before) == 1
    await asyncio.sleep(0.05)
    await monitor.aclose()
    await monitor.aclose()  # idempotent
    assert not monitor.running
    assert watchdogs() == []
    assert asyncio.all_tasks() == before
    monitor.start()  # restartable
    assert monitor.running
    await monitor.aclose()
    assert watchdogs() == []


def test_watchdog_exits_when_the_loop_ends_without_aclose() -> None:
    monitor = LoopLagMonitor(fast())

    async def main() -> None:
        monitor.start()
        await asyncio.sleep(0.05)

    asyncio.run(main())  # cancels the probe at shutdown
    deadline = time.monotonic() + 2.0
    while watchdogs() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watchdogs() == []
    assert not monitor.running

    async def again() -> None:  # the same monitor works on a new loop
        monitor.start()
        assert monitor.running
        await monitor.aclose()

    asyncio.run(again())
    assert watchdogs() == []


def test_a_loop_closed_under_a_pending_probe_stops_the_watchdog() -> None:
    monitor = LoopLagMonitor(fast())
    loop = asyncio.new_event_loop()

    async def main() -> None:
        monitor.start()
        await asyncio.sleep(0.03)

    loop.run_until_complete(main())
    loop.close()  # the probe task is never cancelled
    assert not monitor.running
    deadline = time.monotonic() + 2.0
    while watchdogs() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watchdogs() == []

    async def again() -> None:
        monitor.start()
        assert monitor.running
        await monitor.aclose()

    asyncio.run(again())


# --- the middleware -------------------------------------------------------------------


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hi")


async def run_lifespan(app: Any, check_running: Any) -> list[str]:
    """Drive an ASGI lifespan by hand; call ``check_running`` between startup and shutdown."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    sent: list[str] = []

    async def receive() -> dict[str, str]:
        return await inbox.get()

    async def send(message: Any) -> None:
        sent.append(message["type"])

    await inbox.put({"type": "lifespan.startup"})
    server = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    )
    while "lifespan.startup.complete" not in sent:
        await asyncio.sleep(0.005)
    await check_running()
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(server, 5)
    return sent


async def test_middleware_runs_the_monitor_for_the_lifespan(provider: MeterProvider) -> None:
    app = LoopMonitorMiddleware(
        Starlette(routes=[Route("/", hello)]), fast(), meter_provider=provider
    )

    async def during() -> None:
        assert app.monitor.running
        assert len(watchdogs()) == 1
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/")
        assert response.status_code == 200
        assert response.text == "hi"

    sent = await run_lifespan(app, during)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not app.monitor.running
    assert watchdogs() == []


async def test_middleware_composes_with_fastapi_and_its_lifespan(provider: MeterProvider) -> None:
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        events.append("app startup")
        yield
        events.append("app shutdown")

    api = FastAPI(lifespan=lifespan)

    @api.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    app = LoopMonitorMiddleware(api, fast(), meter_provider=provider)

    async def during() -> None:
        assert app.monitor.running
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/ping")).json() == {"pong": "yes"}

    sent = await run_lifespan(app, during)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == ["app startup", "app shutdown"]
    assert not app.monitor.running
    assert watchdogs() == []


async def test_middleware_starts_on_first_request_without_lifespan(
    provider: MeterProvider,
) -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = LoopMonitorMiddleware(bare, fast(), meter_provider=provider)
    assert not app.monitor.running
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/")).status_code == 204
    assert app.monitor.running
    await app.monitor.aclose()
    assert watchdogs() == []


async def test_disabled_middleware_passes_through(provider: MeterProvider) -> None:
    app = LoopMonitorMiddleware(
        Starlette(routes=[Route("/", hello)]), LoopMonitorSettings(), meter_provider=provider
    )

    async def during() -> None:
        assert not app.monitor.running
        assert watchdogs() == []

    sent = await run_lifespan(app, during)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# --- under a real server --------------------------------------------------------------


async def block_handler(request: Request) -> PlainTextResponse:
    time.sleep(0.4)  # blocks the server's loop on purpose (only in the uvicorn subprocess)
    return PlainTextResponse("blocked")


e2e_app = LoopMonitorMiddleware(
    Starlette(routes=[Route("/ok", hello), Route("/block", block_handler)]),
    LoopMonitorSettings(enabled=True, probe_interval=0.05, lag_threshold=0.1, log_interval=0),
)
"""Served by uvicorn in ``test_under_uvicorn_a_blocking_handler_is_logged_with_its_stack``."""


def test_under_uvicorn_a_blocking_handler_is_logged_with_its_stack() -> None:
    from tests.servers import free_port

    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.test_loopmonitor:e2e_app", "--port", str(port),
         "--host", "127.0.0.1", "--log-level", "info", "--lifespan", "on"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "uvicorn exited"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.1)
        assert httpx.get(f"{base}/block", timeout=10).text == "blocked"
        assert httpx.get(f"{base}/ok", timeout=5).status_code == 200
    finally:
        proc.terminate()
        try:
            output = proc.communicate(timeout=15)[0].decode()
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0].decode()
    # uvicorn re-raises the SIGTERM after a graceful shutdown.
    assert proc.returncode in (0, -15), output
    assert "event loop blocked" in output, output
    assert "in block_handler" in output, output  # the stack sampled during the stall
    assert "Application shutdown complete" in output, output  # the monitor closed cleanly
    assert "Finished server process" in output, output
    assert "Traceback" not in output.split("event loop blocked")[0], output


# --- the blocking-call guard ----------------------------------------------------------

BLOCKING_SOURCE = """
import time

async def handler():
    time.sleep(0.01)
    return "done"

async def swallowing_handler():
    try:
        time.sleep(0.01)
    except Exception:
        return "fail-open"
    return "done"

def sync_helper():
    time.sleep(0.01)
    return "done"
"""


async def test_guard_fails_a_freightscale_coroutine_that_sleeps() -> None:
    module = synthetic_freightscale_module("_guard_probe", BLOCKING_SOURCE)
    with expect_blocking("time.sleep"):
        await module.handler()


async def test_guard_lets_the_tests_own_code_block() -> None:
    time.sleep(0.001)  # not freightscale's frame: allowed
    assert Path(__file__).read_text(encoding="utf-8")


async def test_guard_ignores_helper_threads() -> None:
    module = synthetic_freightscale_module("_guard_probe", BLOCKING_SOURCE)
    assert await asyncio.to_thread(module.sync_helper) == "done"


REDIS_CLIENT_SOURCE = """
import redis.asyncio as aioredis

async def ping(url, **kwargs):
    client = aioredis.Redis.from_url(url, **kwargs)
    try:
        return await client.ping()
    finally:
        await client.aclose()
"""


async def test_guard_finding_redis_clients_need_driver_kwargs(redis_url: str) -> None:
    from freightscale.backends.redis import driver_kwargs

    module = synthetic_freightscale_module("_guard_redis", REDIS_CLIENT_SOURCE)
    with expect_blocking("os.stat"):  # redis-py scans package metadata per client
        await module.ping(redis_url)
    assert await module.ping(redis_url, **driver_kwargs()) is True


def test_guard_fails_tests_under_pytest(tmp_path: Path) -> None:
    """Run a test file with the plugin in a child pytest and read the outcomes."""
    test_file = tmp_path / "test_guarded.py"
    test_file.write_text(
        textwrap.dedent(
            f"""
            import time
            import pytest
            from tests.blocking import synthetic_freightscale_module

            SOURCE = {BLOCKING_SOURCE!r}
            mod = synthetic_freightscale_module("_guard_child", SOURCE)

            @pytest.fixture
            def anyio_backend():
                return "asyncio"

            @pytest.mark.anyio
            async def test_freightscale_blocks():
                await mod.handler()

            @pytest.mark.anyio
            async def test_freightscale_blocks_and_swallows():
                assert await mod.swallowing_handler() == "fail-open"

            @pytest.mark.anyio
            @pytest.mark.allow_blocking
            async def test_opted_out():
                assert await mod.handler() == "done"

            @pytest.mark.anyio
            async def test_own_sleep():
                time.sleep(0.01)

            def test_sync_code_has_no_loop():
                assert mod.sync_helper() == "done"
            """
        ),
        encoding="utf-8",
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src")]),
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",  # only the plugins named below: a quick start
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "anyio.pytest_plugin", "-p", "tests.blocking",
         "-p", "no:cacheprovider",
         "-W", "error", "--strict-markers", "-rA", str(test_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    out = result.stdout
    assert "1 failed, 4 passed, 1 error" in out, out + result.stderr
    assert "FAILED test_guarded.py::test_freightscale_blocks - " in out
    assert "Blocking call to time.sleep" in out
    assert "ERROR test_guarded.py::test_freightscale_blocks_and_swallows" in out
    assert "caught and swallowed" in out
    for name in ("test_opted_out", "test_own_sleep", "test_sync_code_has_no_loop"):
        assert f"PASSED test_guarded.py::{name}" in out
