"""Revocation: one token, a user, a tenant; across instances and processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from freightscale.auth import Authenticator, AuthMiddleware, RedisBus, TokenIssuer
from freightscale.backends.redis import create_redis_client
from tests.auth.conftest import SECRET, bearer, hs_settings, hs_token, make_app
from tests.auth.test_verify import assert_401, get
from tests.servers import RedisServer, free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


async def test_revoke_token_user_and_tenant_in_memory() -> None:
    auth = Authenticator(hs_settings())
    app = AuthMiddleware(make_app(), authenticator=auth)
    one, two = hs_token(jti="j1"), hs_token(jti="j2")
    other_user = hs_token(sub="user-2", jti="j3")
    for token in (one, two, other_user):
        assert (await get(app, bearer(token))).status_code == 200

    await auth.revocations.revoke_token("j1")
    assert_401(await get(app, bearer(one)), "revoked")
    assert (await get(app, bearer(two))).status_code == 200

    await auth.revocations.revoke_user("user-1", "acme", before=time.time() + 1)
    assert_401(await get(app, bearer(two)), "revoked")
    assert (await get(app, bearer(other_user))).status_code == 200

    await auth.revocations.revoke_tenant("acme", before=time.time() + 1)
    assert_401(await get(app, bearer(other_user)), "revoked")
    other_tenant = hs_token(tenant="globex")
    assert (await get(app, bearer(other_tenant))).status_code == 200


async def test_token_issued_after_logout_everywhere_is_accepted() -> None:
    settings = hs_settings()
    issuer = TokenIssuer(settings)
    auth = Authenticator(settings)
    app = AuthMiddleware(make_app(), authenticator=auth)
    old = issuer.issue("user-1", tenant="acme")
    await auth.revocations.revoke_user("user-1", "acme")
    await asyncio.sleep(0.01)
    new = issuer.issue("user-1", tenant="acme")
    assert_401(await get(app, bearer(old)), "revoked")
    assert (await get(app, bearer(new))).status_code == 200


@pytest.fixture
async def redis_pair(redis_url: str) -> AsyncIterator[list[Any]]:
    clients = [create_redis_client(redis_url), create_redis_client(redis_url)]
    yield clients
    for client in clients:
        await client.aclose()


async def _until(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await predicate():
            return time.monotonic() - start
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout}s")


async def test_revocation_reaches_other_instance_via_pubsub(
    redis_pair: list[Any], redis_prefix: str
) -> None:
    settings = hs_settings(key_prefix=redis_prefix, revocation_sync_interval=60)
    a = Authenticator(settings, redis=redis_pair[0])
    b = Authenticator(settings, redis=redis_pair[1])
    app_a = AuthMiddleware(make_app(), authenticator=a)
    app_b = AuthMiddleware(make_app(), authenticator=b)
    token = hs_token(jti="pubsub-1")
    try:
        assert (await get(app_a, bearer(token))).status_code == 200
        assert (await get(app_b, bearer(token))).status_code == 200
        await asyncio.sleep(0.1)  # let B's subscription settle
        await a.revocations.revoke_token("pubsub-1")
        assert_401(await get(app_a, bearer(token)), "revoked")

        async def b_rejects() -> bool:
            return (await get(app_b, bearer(token))).status_code == 401

        elapsed = await _until(b_rejects, 2.0)
        assert elapsed < 2.0  # pub/sub: far below the 60 s poll interval
    finally:
        await a.aclose()
        await b.aclose()


async def test_missed_message_is_caught_by_the_periodic_check(
    redis_pair: list[Any], redis_prefix: str
) -> None:
    settings = hs_settings(key_prefix=redis_prefix, revocation_sync_interval=0.3)
    a = Authenticator(settings, redis=redis_pair[0])
    bus = RedisBus(redis_pair[1], key_prefix=redis_prefix, sync_interval=0.3, pubsub=False)
    b = Authenticator(settings, redis=redis_pair[1], bus=bus)
    app_b = AuthMiddleware(make_app(), authenticator=b)
    token = hs_token(sub="poll-user")
    try:
        assert (await get(app_b, bearer(token))).status_code == 200
        await a.start()
        await a.revocations.revoke_user("poll-user", "acme", before=time.time() + 1)

        async def b_rejects() -> bool:
            return (await get(app_b, bearer(token))).status_code == 401

        elapsed = await _until(b_rejects, 3.0)
        assert elapsed <= 0.3 + 1.0
    finally:
        await a.aclose()
        await b.aclose()


async def test_new_instance_sees_earlier_revocation_in_store(
    redis_pair: list[Any], redis_prefix: str
) -> None:
    settings = hs_settings(key_prefix=redis_prefix)
    a = Authenticator(settings, redis=redis_pair[0])
    token = hs_token(jti="stored-1")
    await a.revocations.revoke_token("stored-1", expires_at=time.time() + 60)
    await a.revocations.revoke_tenant("initech", before=time.time() + 1)
    b = Authenticator(settings, redis=redis_pair[1])
    app_b = AuthMiddleware(make_app(), authenticator=b)
    try:
        assert_401(await get(app_b, bearer(token)), "revoked")
        assert_401(await get(app_b, bearer(hs_token(tenant="initech"))), "revoked")
        assert (await get(app_b, bearer(hs_token()))).status_code == 200
        ttl = await redis_pair[0].ttl(f"{redis_prefix}:auth:revoked:jti:=stored-1")
        assert 0 < ttl <= 60
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.parametrize(("mode", "status"), [("open", 200), ("closed", 503)])
async def test_store_outage_follows_fail_mode(
    redis_server: RedisServer, redis_prefix: str, mode: str, status: int
) -> None:
    client = create_redis_client(redis_server.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    settings = hs_settings(key_prefix=redis_prefix, revocation_fail_mode=mode, redis_timeout=0.5)
    auth = Authenticator(settings, redis=client)
    app = AuthMiddleware(make_app(), authenticator=auth)
    try:
        assert (await get(app, bearer(hs_token()))).status_code == 200
        redis_server.stop()
        response = await get(app, bearer(hs_token()))
        assert response.status_code == status
        if status == 503:
            assert response.headers["content-type"] == "application/problem+json"
        redis_server.start()
        await client.ping()
        assert (await get(app, bearer(hs_token()))).status_code == 200  # recovers by itself
    finally:
        await auth.aclose()
        await client.aclose()


class AppProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.auth.app_server:app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT, env=env,
        )  # fmt: skip
        wait_port(self.port, timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def two_apps(redis_url: str, redis_prefix: str) -> Iterator[list[AppProcess]]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        FS_AUTH_REDIS_URL=redis_url,
        FS_AUTH_PREFIX=redis_prefix,
        FS_AUTH_SYNC_INTERVAL="2",
    )
    apps: list[AppProcess] = []
    try:
        apps = [AppProcess(env), AppProcess(env)]
        yield apps
    finally:
        for app in apps:
            app.stop()


@pytest.mark.slow
async def test_revocation_across_two_processes(two_apps: list[AppProcess]) -> None:
    a, b = two_apps
    token = TokenIssuer(hs_settings(secret=SECRET)).issue("user-9", tenant="acme")
    import jwt

    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    async with httpx.AsyncClient(timeout=5) as client:
        for app in (a, b):
            response = await client.get(f"{app.url}/me", headers=bearer(token))
            assert response.json() == {"user": "user-9"}
        # Both processes now hold the token in their verification caches.
        response = await client.post(f"{a.url}/revoke", json={"jti": jti}, headers=bearer(token))
        assert response.status_code == 200
        revoked_at = time.monotonic()
        while True:
            response = await client.get(f"{b.url}/me", headers=bearer(token))
            if response.status_code == 401:
                break
            assert time.monotonic() - revoked_at < 2.0 + 1.0, "B did not honour the revocation"
            await asyncio.sleep(0.02)
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert response.json()["detail"] == "the token has been revoked"


@pytest.mark.slow
async def test_revocation_on_a_redis_cluster(redis_cluster_url: str, redis_prefix: str) -> None:
    from freightscale.backends.redis import ensure_ready

    clients = [create_redis_client(redis_cluster_url), create_redis_client(redis_cluster_url)]
    for client in clients:
        await ensure_ready(client)
    settings = hs_settings(key_prefix=redis_prefix, revocation_sync_interval=0.5)
    a = Authenticator(settings, redis=clients[0])
    b = Authenticator(settings, redis=clients[1])
    app_b = AuthMiddleware(make_app(), authenticator=b)
    token = hs_token(jti="cluster-1")
    try:
        assert (await get(app_b, bearer(token))).status_code == 200
        await a.start()
        await a.revocations.revoke_token("cluster-1")

        async def b_rejects() -> bool:
            return (await get(app_b, bearer(token))).status_code == 401

        assert await _until(b_rejects, 3.0) <= 0.5 + 1.5
    finally:
        await a.aclose()
        await b.aclose()
        for client in clients:
            await client.aclose()


async def test_bus_with_a_client_that_opens_later(redis_url: str, redis_prefix: str) -> None:
    """As in build_stack: components are built before the shared client opens."""
    holder: list[Any] = []
    bus = RedisBus(lambda: holder[0] if holder else None, key_prefix=redis_prefix)
    auth = Authenticator(hs_settings(key_prefix=redis_prefix), bus=bus)
    app = AuthMiddleware(make_app(), authenticator=auth)
    try:
        assert (await get(app, bearer(hs_token()))).status_code == 200
        assert not bus.started  # no client yet: nothing started, nothing failed
        holder.append(create_redis_client(redis_url))
        assert (await get(app, bearer(hs_token()))).status_code == 200
        assert bus.started
        await auth.revocations.revoke_token("late-1")
        length = await holder[0].xlen(f"{redis_prefix}:auth:log")
        assert length == 1
    finally:
        await auth.aclose()
        if holder:
            await holder[0].aclose()
