"""Two app instances (two uvicorn processes) sharing one Redis see each other's writes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port, wait_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_instances(redis_url: str, redis_prefix: str) -> Iterator[tuple[str, str]]:
    env = dict(os.environ)
    env.update(
        FS_E2E_REDIS_URL=redis_url,
        FS_E2E_PREFIX=redis_prefix,
        PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}",
    )
    processes = []
    urls = []
    try:
        for _ in range(2):
            port = free_port()
            command = [sys.executable, "-m", "uvicorn", "tests.sessions.e2e_app:app", "--host",
                       "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
            processes.append(
                subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
            wait_port(port, timeout=20)
        yield urls[0], urls[1]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()


async def test_two_processes_share_sessions(two_instances: tuple[str, str]) -> None:
    a, b = two_instances
    # One cookie jar for both: cookies are per host, not per port.
    async with httpx.AsyncClient(timeout=10) as c:
        assert (await c.get(f"{a}/set?user=alice")).status_code == 200
        assert (await c.get(f"{b}/get")).json()["data"] == {"user": "alice"}
        await c.get(f"{b}/set?tenant=acme")
        assert (await c.get(f"{a}/get")).json()["data"] == {"user": "alice", "tenant": "acme"}
        # Concurrent writes of one session on two processes: merged, nothing lost.
        await asyncio.gather(
            c.get(f"{a}/slow-set?key=x&value=1&wait=0.3"),
            c.get(f"{b}/slow-set?key=y&value=2&wait=0.3"),
        )
        data = (await c.get(f"{b}/get")).json()["data"]
    assert data == {"user": "alice", "tenant": "acme", "x": "1", "y": "2"}
