"""End to end: the FreightOps seed under a real uvicorn in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def running_example(*command: str, **env_overrides: str) -> Iterator[str]:
    """Run ``python -m examples.freightops`` (or ``command``) on a free port; yield its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREIGHTSCALE_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.update(env_overrides)
    argv = [sys.executable, *(command or ("-m", "examples.freightops")), "--port", str(port)]
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert process.stdout is not None
        if not command:
            first = process.stdout.readline()
            assert base in first, first
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not come up: {process.stdout.read()}")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_example() as base:
        yield base


def test_health_endpoints(server: str) -> None:
    live = httpx.get(f"{server}/healthz", timeout=5)
    ready = httpx.get(f"{server}/readyz", timeout=5)
    assert live.status_code == 200
    assert live.headers["content-type"] == "application/health+json"
    assert live.json() == {"status": "pass"}
    assert ready.status_code == 200
    assert ready.json()["status"] == "pass"


def test_status_route(server: str) -> None:
    response = httpx.get(f"{server}/api/v1/status", headers={"X-Request-ID": "e2e-1"}, timeout=5)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "e2e-1"
    body = response.json()
    assert body["service"] == "freightops"
    assert body["request_id"] == "e2e-1"
    assert body["redis"] == "embedded (memory)"
    # Authentication, plan limits, response cache, compression and sessions are stack layers.
    assert body["components"] == [
        "telemetry", "health", "errors", "auth", "ratelimit", "cache", "compression", "sessions",
    ]  # fmt: skip


def test_unknown_route_is_a_plain_404(server: str) -> None:
    response = httpx.get(f"{server}/nope", timeout=5)
    assert response.status_code == 404
    assert "x-request-id" in response.headers


def test_unreachable_redis_starts_and_reports_not_ready() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    start = time.monotonic()
    with running_example(
        FREIGHTSCALE_REDIS__URL=url,
        FREIGHTSCALE_REDIS__CONNECT_TIMEOUT="0.5",
        FREIGHTSCALE_HEALTH__CHECK_TIMEOUT="1",
    ) as base:
        assert time.monotonic() - start < 15
        live = httpx.get(f"{base}/healthz", timeout=5)
        ready = httpx.get(f"{base}/readyz", timeout=5)
        status = httpx.get(f"{base}/api/v1/status", timeout=5)
    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis:responseTime"][0]["status"] == "fail"
    assert status.status_code == 200
    assert status.json()["redis"] == "configured"


def test_without_lifespan_redis_opens_on_the_first_request(
    redis_url: str, redis_prefix: str
) -> None:
    # uvicorn --lifespan off: the stack opens the Redis client lazily.
    command = ("-m", "uvicorn", "examples.freightops.app:app", "--lifespan", "off")
    with running_example(
        *command,
        FREIGHTSCALE_REDIS__URL=redis_url,
        FREIGHTSCALE_REDIS__KEY_PREFIX=redis_prefix,
    ) as base:
        ready = httpx.get(f"{base}/readyz", timeout=5)
        status = httpx.get(f"{base}/api/v1/status", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["checks"]["redis:responseTime"][0]["status"] == "pass"
    assert status.json()["redis"] == "configured"
