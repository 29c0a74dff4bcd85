"""Fixtures for the FreightOps example: a seeded PostgreSQL database and real servers.

Servers are real ``uvicorn`` subprocesses on free ports, configured only by
environment variables (as in production); two processes on the same
database and Redis stand for two workers behind a load balancer.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.conftest import DATABASE_URL, _create_database, _drop_database, _plain_pg_url
from tests.servers import free_port

if TYPE_CHECKING:
    from examples.freightops.seed import SeedPlan

ROOT = Path(__file__).resolve().parents[2]
SECRET = "e2e-secret-" + "x" * 32


@dataclass
class Server:
    """A running FreightOps server."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def launch_server(env: dict[str, str], *, cwd: Path, log: Path) -> Server:
    """Start ``uvicorn --factory examples.freightops.application:create_app`` (no wait)."""
    port = free_port()
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("FREIGHTSCALE_", "FREIGHTOPS_"))
    }
    full_env = {**inherited, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", **env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "--factory",
                "examples.freightops.application:create_app",
                "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", "--lifespan", "on",
            ],
            cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Server(f"http://127.0.0.1:{port}", process, log)


def wait_ready(server: Server, timeout: float = 60) -> Server:
    """Wait until ``server`` answers ``GET /``; fail with its log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            if httpx.get(server.url + "/", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"FreightOps server failed to start:\n{server.log.read_text()[-3000:]}")


async def seed_database(url: str, plan: SeedPlan) -> None:
    """Create the FreightOps schema at ``url`` and seed it (cheap password hashes)."""
    from examples.freightops.seed import create_schema, seed
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        await create_schema(engine)
        await seed(engine, replace(plan, password_iterations=1000))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def fo_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database with the FreightOps schema and a small seed."""
    from examples.freightops.seed import SeedPlan

    admin = _plain_pg_url(DATABASE_URL)
    name = f"fo_e2e_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_database(admin, name))
    url = urlunsplit(urlsplit(DATABASE_URL)._replace(scheme="postgresql+asyncpg", path="/" + name))

    asyncio.run(seed_database(url, SeedPlan(tenants=2, users=30, shipments=300)))
    yield url
    asyncio.run(_drop_database(admin, name))


@pytest.fixture(scope="session")
def fo_redis_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix for the example's servers; its keys are deleted at the end."""
    import redis

    prefix = f"fstest-fo-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="session")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., list[Server]]]:
    """Start FreightOps servers (in parallel); every one is stopped at the end."""
    started: list[Server] = []

    def factory(*envs: dict[str, str], cwd: Path | None = None) -> list[Server]:
        servers = []
        for env in envs:
            workdir = cwd or tmp_path_factory.mktemp("fo-server")
            server = launch_server(env, cwd=workdir, log=workdir / f"server-{len(started)}.log")
            started.append(server)
            servers.append(server)
        return [wait_ready(server) for server in servers]

    yield factory
    for server in started:
        server.stop()


def production_env(
    database_url: str, redis_url: str, prefix: str, profile: str, session_dir: Path
) -> dict[str, str]:
    """The environment of a production-mode server (PostgreSQL + Redis)."""
    return {
        "FREIGHTSCALE_ENVIRONMENT": "development",  # plain-HTTP cookies in tests
        "FREIGHTSCALE_DATABASE__URL": database_url,
        "FREIGHTSCALE_DATABASE__APPLICATION_NAME": f"fo-e2e-{profile}",
        "FREIGHTSCALE_REDIS__URL": redis_url,
        "FREIGHTSCALE_REDIS__KEY_PREFIX": prefix,
        "FREIGHTSCALE_AUTH__SECRET": SECRET,
        # The freightscale profile runs with the database layer in build_stack.
        "FREIGHTSCALE_DATABASE__ENABLED": "true" if profile == "freightscale" else "false",
        "FREIGHTOPS_PROFILE": profile,
        "FREIGHTOPS_SESSION_DIR": str(session_dir),
    }


@pytest.fixture(scope="session")
def worker_envs(
    fo_database_url: str,
    redis_url: str,
    fo_redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, dict[str, str]]:
    """The production-mode environment of each profile's workers."""
    return {
        profile: production_env(
            fo_database_url, redis_url, fo_redis_prefix, profile,
            tmp_path_factory.mktemp(f"{profile}-sessions"),
        )
        for profile in ("freightscale", "naive")
    }  # fmt: skip


@pytest.fixture(scope="session")
def all_workers(
    worker_envs: dict[str, dict[str, str]], server_factory: Callable[..., list[Server]]
) -> dict[str, tuple[Server, Server]]:
    """Two workers per profile, all on the same PostgreSQL database and Redis.

    The naive pair shares one session directory (the legacy store on a shared disk).
    """
    fs_env, naive_env = worker_envs["freightscale"], worker_envs["naive"]
    a, b, c, d = server_factory(fs_env, fs_env, naive_env, naive_env)
    return {"freightscale": (a, b), "naive": (c, d)}


@pytest.fixture(scope="session")
def fs_workers(all_workers: dict[str, tuple[Server, Server]]) -> tuple[Server, Server]:
    """Two freightscale-profile workers sharing PostgreSQL and Redis."""
    return all_workers["freightscale"]


@pytest.fixture(scope="session")
def naive_workers(all_workers: dict[str, tuple[Server, Server]]) -> tuple[Server, Server]:
    """Two naive-profile workers sharing the database and one session directory."""
    return all_workers["naive"]
