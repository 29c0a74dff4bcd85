"""A real uvicorn: clients that hang up mid-request leak no connection."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.pg_servers import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ)
    env.update(
        PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        FREIGHTSCALE_DATABASE__URL=database_url,
        FREIGHTSCALE_DATABASE__POOL_SIZE="3",
        FREIGHTSCALE_DATABASE__MAX_OVERFLOW="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.db.e2e_app:app", "--port", str(port),
         "--host", "127.0.0.1", "--log-level", "warning", "--lifespan", "on"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/pool", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"uvicorn did not start:\n{out}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def checked_out(http: httpx.AsyncClient) -> int:
    return int((await http.get("/pool")).json()["checked_out"])


async def test_hung_up_clients_leak_no_connection(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=5) as http:
        # Client gives up on a slow request.
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/sleep", params={"s": 1.5}, timeout=0.3)
        # Client hangs up in the middle of a streamed response.
        async with (
            httpx.AsyncClient(base_url=server, timeout=5) as other,
            other.stream("GET", "/stream") as response,
        ):
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > 50_000:
                    break
        with anyio.fail_after(10):
            while await checked_out(http) != 0:
                await anyio.sleep(0.1)
        # And the server keeps serving.
        assert (await http.get("/sleep", params={"s": 0})).text == "slept"
        assert await checked_out(http) == 0
