"""Across real processes: two uvicorn instances sharing one Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.servers import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
# Behind a load balancer both instances see one Host (the host is part of the key).
HOST = {"host": "freight.example"}


@pytest.fixture(scope="module")
def redis_prefix(redis_url: str) -> Iterator[str]:
    """One key prefix for both tests of the module (the servers start once)."""
    prefix = f"fstest-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="module")
def instances(redis_url: str, redis_prefix: str) -> Iterator[list[str]]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}/src:{ROOT}",
        "CACHE_TEST_REDIS_URL": redis_url,
        "CACHE_TEST_PREFIX": redis_prefix,
    }
    procs, urls = [], []
    try:
        for _ in range(2):
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "tests.caching.apps:process_app",
                        "--port",
                        str(port),
                        "--log-level",
                        "warning",
                        "--no-access-log",
                    ],
                    cwd=ROOT,
                    env=env,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_port(int(url.rsplit(":", 1)[1]), 20)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def _runs(redis_url: str, key: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.get(key) or 0)
    finally:
        client.close()


async def test_single_flight_across_two_processes(
    instances: list[str], redis_url: str, redis_prefix: str
) -> None:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(timeout=20, limits=limits) as c:
        responses = await asyncio.gather(
            *(c.get(f"{instances[i % 2]}/slow", headers=HOST) for i in range(200))
        )
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1  # every client got the one fill
    assert _runs(redis_url, f"{redis_prefix}:handler-runs") == 1
    served_by = {r.headers["x-cache"] for r in responses}
    assert "HIT" in served_by


async def test_tag_invalidation_seen_by_the_other_process(instances: list[str]) -> None:
    a, b = instances
    async with httpx.AsyncClient(timeout=10, headers=HOST) as c:
        first = (await c.get(f"{a}/items/7")).json()
        hit_b = await c.get(f"{b}/items/7")  # B fills its L1 from Redis
        assert hit_b.headers["x-cache"] == "HIT"
        assert hit_b.json() == first
        assert (await c.get(f"{b}/items/7")).headers["x-cache"] == "HIT"  # from B's L1
        assert (await c.post(f"{a}/items/7")).status_code == 200  # invalidates item:7 on A
        for _ in range(50):  # pub/sub reaches B within milliseconds
            after = await c.get(f"{b}/items/7")
            if after.headers["x-cache"] == "MISS":
                break
            await asyncio.sleep(0.02)
        assert after.headers["x-cache"] == "MISS"
        assert after.json()["v"] != first["v"]
