"""Graceful drain: in-process behaviour, then real uvicorn and Granian processes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop

from freightscale.health import HealthApp
from freightscale.settings import FreightScaleSettings
from freightscale.settings.health import HealthSettings
from freightscale.stack import Resource, Stack, build_stack
from freightscale.stack.drain import Drain
from freightscale.types import Receive, Scope, Send
from tests.helpers import LifespanDriver, free_port, http_scope, request
from tests.servers import wait_port

ROOT = Path(__file__).resolve().parents[1]


# -- in process ----------------------------------------------------------------


def drain_settings(**values: Any) -> FreightScaleSettings:
    health = {"cache_ttl": 0, "drain_on_signal": False, **values}
    return FreightScaleSettings(health=health, telemetry={"enabled": False})


class Gate:
    """A bare ASGI app whose ``/wait`` requests block until the gate opens."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/wait":
            self.entered += 1
            await self.open.wait()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"connection", b"keep-alive")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})


async def test_inflight_count_and_connection_close_only_while_draining() -> None:
    gate = Gate()
    stack = build_stack(gate, drain_settings())
    task = asyncio.create_task(request(stack, http_scope("/wait")))
    while gate.entered < 1:
        await asyncio.sleep(0)
    assert stack.drain.inflight == 1
    before = await request(stack, http_scope("/"))
    assert before.header("connection") == "keep-alive"

    stack.drain.begin()
    during = await request(stack, http_scope("/"))
    assert during.status == 200
    # replaced, not appended: exactly one Connection header, and it says close.
    assert [v for k, v in during.headers if k.lower() == b"connection"] == [b"close"]
    ready = await request(stack, http_scope("/readyz"))
    assert ready.status == 503
    assert ready.header("connection") == "close"
    live = await request(stack, http_scope("/healthz"))
    assert live.status == 200

    gate.open.set()
    held = await task
    # It started before the drain but answered during it: it closes too.
    assert held.header("connection") == "close"
    assert stack.drain.inflight == 0


async def test_http2_responses_get_no_connection_header() -> None:
    stack = build_stack(Gate(), drain_settings())
    stack.drain.begin()
    scope = http_scope("/")
    scope["http_version"] = "2"
    response = await request(stack, scope)
    assert response.header("connection") == "keep-alive"  # the app's own, untouched


async def test_wait_idle_times_out_and_then_succeeds() -> None:
    gate = Gate()
    stack = build_stack(gate, drain_settings())
    assert await stack.drain.wait_idle(0.01) is True
    task = asyncio.create_task(request(stack, http_scope("/wait")))
    while gate.entered < 1:
        await asyncio.sleep(0)
    assert await stack.drain.wait_idle(0.05) is False
    asyncio.get_running_loop().call_later(0.05, gate.open.set)
    assert await stack.drain.wait_idle(2) is True
    await task


def tracking_resource(events: list[str]) -> Resource:
    async def open_(stack: Stack) -> str:
        events.append("open")
        return "pool"

    async def close(value: str) -> None:
        events.append("pools closed")

    return Resource("pool", lambda s: True, open_, close)


async def test_lifespan_shutdown_holds_readiness_then_waits_for_inflight() -> None:
    events: list[str] = []
    gate = Gate()
    settings = drain_settings(drain_delay=0.3, grace_period=5)
    health = HealthApp(settings.health)
    stack = Stack(
        gate, settings, health=health, components=(), resources=(tracking_resource(events),)
    )
    lifespan = LifespanDriver(stack)
    assert (await lifespan.startup())["type"] == "lifespan.startup.complete"
    held = asyncio.create_task(request(stack, http_scope("/wait")))
    while gate.entered < 1:
        await asyncio.sleep(0)

    started = time.monotonic()
    shutdown = asyncio.create_task(lifespan.shutdown())
    await asyncio.sleep(0.05)
    ready = await request(stack, http_scope("/readyz"))
    assert ready.status == 503
    assert b"draining" in ready.body
    # The delay passes, but a request is still in flight: the pools stay open.
    await asyncio.sleep(0.45)
    assert not shutdown.done()
    assert events == ["open"]
    assert (await request(stack, http_scope("/"))).header("connection") == "close"

    gate.open.set()
    assert (await held).status == 200
    assert (await shutdown)["type"] == "lifespan.shutdown.complete"
    assert events == ["open", "pools closed"]
    assert time.monotonic() - started >= 0.3


async def test_grace_period_overrun_is_logged_and_pools_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[str] = []
    gate = Gate()
    settings = drain_settings(grace_period=0.1)
    stack = Stack(
        gate,
        settings,
        health=HealthApp(settings.health),
        components=(),
        resources=(tracking_resource(events),),
    )
    lifespan = LifespanDriver(stack)
    await lifespan.startup()
    held = asyncio.create_task(request(stack, http_scope("/wait")))
    while gate.entered < 1:
        await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="freightscale.drain"):
        assert (await lifespan.shutdown())["type"] == "lifespan.shutdown.complete"
    assert events == ["open", "pools closed"]
    assert "1 request(s) still in flight after grace_period=0.1s" in caplog.text
    gate.open.set()
    await held


async def test_a_restarted_stack_is_ready_again() -> None:
    stack = build_stack(Gate(), drain_settings())
    lifespan = LifespanDriver(stack)
    await lifespan.startup()
    await lifespan.shutdown()
    assert (await request(stack, http_scope("/readyz"))).status == 503
    again = LifespanDriver(stack)
    assert (await again.startup())["type"] == "lifespan.startup.complete"
    assert (await request(stack, http_scope("/readyz"))).status == 200
    assert (await request(stack, http_scope("/"))).header("connection") == "keep-alive"
    await again.shutdown()


def test_settings_bounds() -> None:
    assert HealthSettings().drain_delay == 0
    assert HealthSettings().drain_on_signal is True
    with pytest.raises(ValueError, match="drain_delay"):
        HealthSettings(drain_delay=-1)
    with pytest.raises(ValueError, match="grace_period"):
        HealthSettings(grace_period=10_000)


# -- signal hooks, in this process (the server's handler is a stand-in) ---------


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def run_on(loop_name: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop_name == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
@pytest.mark.parametrize("style", ["signal.signal", "loop.add_signal_handler"])
def test_signal_is_held_for_drain_delay_then_handed_over(loop_name: str, style: str) -> None:
    """uvicorn's style (``signal.signal``) and Granian's (``loop.add_signal_handler``)."""
    seen: list[tuple[float, int]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def server_handler(signum: int, frame: object) -> None:
            seen.append((time.monotonic(), signum))

        previous = signal.getsignal(signal.SIGTERM)
        if style == "signal.signal":
            signal.signal(signal.SIGTERM, server_handler)
        else:
            loop.add_signal_handler(signal.SIGTERM, server_handler, signal.SIGTERM, None)
        try:
            health = HealthApp()
            drain = Drain(HealthSettings(drain_delay=0.5), health)
            drain.install_signal_handlers()
            sent = time.monotonic()
            signal.raise_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            assert drain.draining
            assert health.draining
            assert seen == []  # the server does not know yet
            await until(lambda: bool(seen))
            assert len(seen) == 1
            assert seen[0][1] == signal.SIGTERM
            # Held for the delay; uvloop's timers have millisecond resolution
            # and may fire a fraction of a millisecond early by time.monotonic().
            assert seen[0][0] - sent >= 0.5 - 0.005
            # A later signal goes straight through.
            signal.raise_signal(signal.SIGTERM)
            await asyncio.sleep(0.05)
            assert len(seen) == 2
            # Shutdown gives the signal back to the server's own handler.
            drain.remove_signal_handlers()
            if style == "signal.signal":
                assert signal.getsignal(signal.SIGTERM) is server_handler
            signal.raise_signal(signal.SIGTERM)
            await asyncio.sleep(0.05)
            assert len(seen) == 3
        finally:
            if style == "signal.signal":
                signal.signal(signal.SIGTERM, previous)
            else:
                loop.remove_signal_handler(signal.SIGTERM)
                signal.signal(signal.SIGTERM, previous)

    run_on(loop_name, main)


def test_second_signal_skips_the_rest_of_the_delay() -> None:
    seen: list[int] = []

    async def main() -> None:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
        try:
            drain = Drain(HealthSettings(drain_delay=30), HealthApp())
            drain.install_signal_handlers()
            signal.raise_signal(signal.SIGINT)
            await asyncio.sleep(0.05)
            assert drain.draining
            assert seen == []
            signal.raise_signal(signal.SIGINT)
            await asyncio.sleep(0.05)
            assert seen == [signal.SIGINT]
            drain.remove_signal_handlers()
        finally:
            signal.signal(signal.SIGINT, previous)

    asyncio.run(main())


def test_signal_after_a_manual_drain_waits_only_the_rest_of_the_delay() -> None:
    seen: list[float] = []

    async def main() -> None:
        previous = signal.signal(
            signal.SIGTERM, lambda signum, frame: seen.append(time.monotonic())
        )
        try:
            drain = Drain(HealthSettings(drain_delay=1.0), HealthApp())
            drain.install_signal_handlers()
            drain.begin()  # e.g. a preStop hook calling an admin endpoint
            began = time.monotonic()
            await asyncio.sleep(0.7)
            signal.raise_signal(signal.SIGTERM)
            await until(lambda: bool(seen))
            # 1.0 s after the drain began, not 1.0 s after the signal (1.7).
            assert 1.0 <= seen[0] - began < 1.5
            drain.remove_signal_handlers()
        finally:
            signal.signal(signal.SIGTERM, previous)

    asyncio.run(main())


def test_opt_out_and_unhandled_signals_leave_handlers_alone() -> None:
    async def main() -> None:
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        Drain(HealthSettings(drain_on_signal=False), HealthApp()).install_signal_handlers()
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
        # SIGTERM at its default: no server handler to put the drain in front of.
        drain = Drain(HealthSettings(), HealthApp())
        drain.install_signal_handlers()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        # (SIGINT has asyncio.run's handler, which the drain does wrap.)
        assert signal.getsignal(signal.SIGINT) is not before[1]
        drain.remove_signal_handlers()
        assert signal.getsignal(signal.SIGINT) is before[1]

    asyncio.run(main())


# -- real servers -----------------------------------------------------------------


class Server:
    """A server process running ``tests.drain_app:app``; its output collected by a thread."""

    def __init__(self, command: list[str], port: int, env: dict[str, str]) -> None:
        self.port = port
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # our signals reach the server only
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def events(self) -> list[str]:
        return [line.split("EVENT ", 1)[1] for line in self.lines if "EVENT " in line]

    def wait_events(self, event: str, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.events().count(event) < count:
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail(f"waited for {count}x {event!r}; output:\n{self.output}")
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(5)
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_server(kind: str, redis_url: str, redis_prefix: str, **health: str) -> Server:
    port = free_port()
    env = dict(os.environ)
    env.update(
        PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        FREIGHTSCALE_REDIS__URL=redis_url,
        FREIGHTSCALE_REDIS__KEY_PREFIX=redis_prefix,
        FREIGHTSCALE_TELEMETRY__ENABLED="false",
        FREIGHTSCALE_HEALTH__CACHE_TTL="0",
        DRAIN_TEST_SLOW="1.5",
    )
    env.update({f"FREIGHTSCALE_HEALTH__{k.upper()}": v for k, v in health.items()})
    app = "tests.drain_app:app"
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if kind == "uvicorn":
        command = [sys.executable, "-m", "uvicorn", app, *host, "--log-level", "warning"]
    else:
        command = [sys.executable, "-m", "granian", "--interface", "asgi", *host,
                   "--workers", "1", "--log-level", "warning", app]  # fmt: skip
    server = Server(command, port, env)
    try:
        wait_port(port, timeout=15)
        server.wait_events("app startup", 1)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def http_exchange(sock: socket.socket, path: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on an open (keep-alive) socket."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65_536)
        assert chunk, f"connection closed before the response to {path}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65_536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def get(port: int, path: str) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.get(f"http://127.0.0.1:{port}{path}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["uvicorn", "granian"])
def test_sigterm_drains_without_cutting_requests(
    kind: str, redis_url: str, redis_prefix: str, servers: list[Server]
) -> None:
    server = start_server(kind, redis_url, redis_prefix, drain_delay="1.0", grace_period="10")
    servers.append(server)
    port = server.port
    assert get(port, "/readyz").status_code == 200

    keep_alive = socket.create_connection(("127.0.0.1", port), timeout=10)
    with keep_alive, concurrent.futures.ThreadPoolExecutor(3) as pool:
        status, headers, _ = http_exchange(keep_alive, "/fast")
        assert status == 200
        assert headers.get("connection", "keep-alive").lower() != "close"

        slow = [pool.submit(get, port, "/slow") for _ in range(3)]
        server.wait_events("slow start", 3)
        server.signal(signal.SIGTERM)
        signalled = time.monotonic()

        # Readiness turns 503 while the server still accepts connections.
        deadline = signalled + 0.8
        while (ready := get(port, "/readyz")).status_code != 503:
            assert time.monotonic() < deadline, "readiness never turned 503"
            time.sleep(0.02)
        assert ready.json()["output"] == "draining"
        fresh = get(port, "/fast")
        assert fresh.status_code == 200
        assert fresh.headers["connection"] == "close"
        assert time.monotonic() - signalled < 1.0, "the checks above ran past the delay"

        # The open keep-alive connection gets its answer, told to close, then closed.
        status, headers, body = http_exchange(keep_alive, "/fast")
        assert (status, body) == (200, b"fast")
        assert headers["connection"].lower() == "close"
        assert keep_alive.recv(1) == b""

        # No in-flight request was cut: complete 200s, though the server was
        # told to stop (after the delay) while they were still running.
        for future in slow:
            response = future.result(timeout=10)
            assert response.status_code == 200
            assert response.content == b"x" * 65_536

    server.process.wait(10)
    events = server.events()
    assert events.count("slow done") == 3, server.output
    # The pools closed after the last request (the app's own shutdown runs right before).
    assert events.index("app shutdown") > max(i for i, e in enumerate(events) if e == "slow done")
    assert "Traceback" not in server.output, server.output
    # After the drain the port is closed.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.slow
def test_second_sigterm_skips_the_delay_under_uvicorn(
    redis_url: str, redis_prefix: str, servers: list[Server]
) -> None:
    server = start_server("uvicorn", redis_url, redis_prefix, drain_delay="30")
    servers.append(server)
    server.signal(signal.SIGTERM)
    deadline = time.monotonic() + 2
    while get(server.port, "/readyz").status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    server.signal(signal.SIGTERM)
    server.process.wait(5)
    assert "app shutdown" in server.events()


@pytest.mark.slow
def test_opt_out_leaves_uvicorn_to_stop_at_once(
    redis_url: str, redis_prefix: str, servers: list[Server]
) -> None:
    server = start_server(
        "uvicorn", redis_url, redis_prefix, drain_delay="30", drain_on_signal="false"
    )
    servers.append(server)
    server.signal(signal.SIGTERM)
    # uvicorn stops accepting immediately; the drain then starts at lifespan
    # shutdown and holds the pools for the delay (readiness can no longer be asked).
    wait_port(server.port, timeout=3, open_=False)
    server.stop()
