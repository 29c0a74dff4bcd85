"""Unit tests of the example's building blocks (no server needed)."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from examples.freightops.models import ROLE_PERMISSIONS, Shipment, User
from examples.freightops.naive import FileSessionStore
from examples.freightops.security import (
    decode_token,
    hash_password,
    issue_token,
    permission_loader,
    permissions_for,
    verify_password,
)
from examples.freightops.seed import SeedPlan, generate
from examples.freightops.standins import get_many

from freightscale.stack import Stack
from freightscale.stores import MemoryStore

SECRET = "unit-secret-" + "k" * 32


def test_password_hash_round_trip_and_rejections() -> None:
    encoded = hash_password("correct horse", iterations=1_000)
    assert encoded.startswith("pbkdf2_sha256$1000$")
    assert verify_password("correct horse", encoded)
    assert not verify_password("wrong horse", encoded)
    assert not verify_password("correct horse", "garbage")
    assert not verify_password("correct horse", "md5$1$x$y")
    assert hash_password("same", iterations=1_000) != hash_password("same", iterations=1_000)


def test_token_round_trip_tamper_and_expiry() -> None:
    token, claims = issue_token(
        SECRET, user_id=7, tenant_id=3, role="driver", session_id="s" * 20, ttl=60
    )
    decoded = decode_token(SECRET, token)
    assert decoded["sub"] == "7"
    assert decoded["tenant"] == "3"
    assert decoded["roles"] == ["driver"]
    assert set(decoded["scope"].split()) == permissions_for("driver")
    assert decoded["jti"] == claims["jti"]
    with pytest.raises(jwt.InvalidTokenError):
        decode_token("another-secret-" + "x" * 32, token)
    header, payload, signature = token.split(".")
    with pytest.raises(jwt.InvalidTokenError):
        decode_token(SECRET, f"{header}.{payload}x.{signature}")
    old, _ = issue_token(
        SECRET, user_id=7, tenant_id=3, role="driver", session_id="s" * 20, ttl=60,
        now=time.time() - 3600,
    )  # fmt: skip
    with pytest.raises(jwt.ExpiredSignatureError):
        decode_token(SECRET, old)


def test_roles_grant_what_the_issue_says() -> None:
    assert "invoices:write" not in permissions_for("driver")
    assert "tracking:write" in permissions_for("driver")
    assert "invoices:write" in permissions_for("accountant")
    assert "shipments:write" in permissions_for("dispatcher")
    assert all(not p.endswith(":write") for p in permissions_for("viewer"))
    assert permissions_for("admin") >= set().union(*ROLE_PERMISSIONS.values())
    assert permissions_for("nobody") == frozenset()


def test_seed_is_deterministic_and_tenant_consistent() -> None:
    plan = SeedPlan(tenants=3, users=30, shipments=90, password_iterations=1_000)
    first, second = generate(plan), generate(plan)
    shipments = first[Shipment.__table__]  # type: ignore[index]
    assert len(shipments) == 90
    assert [s["reference"] for s in shipments] == [
        s["reference"]
        for s in second[Shipment.__table__]  # type: ignore[index]
    ]
    users = first[User.__table__]  # type: ignore[index]
    assert len({u["email"] for u in users}) == len(users)
    assert {"admin@acme.example", "driver@globex.example", "viewer@initech.example"} <= {
        u["email"] for u in users
    }
    # Every row that points at a shipment belongs to that shipment's tenant.
    tenant_of = {s["id"]: s["tenant_id"] for s in shipments}
    for table, rows in first.items():
        for row in rows:
            if "shipment_id" in row:
                assert tenant_of[row["shipment_id"]] == row["tenant_id"], table.name


async def test_file_session_store_round_trip_and_hostile_ids(tmp_path: Path) -> None:
    store = FileSessionStore(str(tmp_path))
    session_id = await store.create({"user_id": 1}, ttl=60)
    assert await store.get(session_id) == {"user_id": 1}
    await store.touch(session_id, {"user_id": 1})
    assert "last_seen" in (await store.get(session_id) or {})
    for hostile in ("../../etc/passwd", "a" * 200, "short", "x/" * 10):
        assert await store.get(hostile) is None
    await store.delete(session_id)
    assert await store.get(session_id) is None
    assert list(tmp_path.iterdir()) == []


async def test_get_many_reads_redis_in_one_call(redis_url: str, redis_prefix: str) -> None:
    from freightscale.stores import store_from_url

    root = store_from_url(redis_url, key_prefix=redis_prefix)
    store = root.with_namespace("fo")
    try:
        await store.set("a", b"1")
        await store.set("c", b"3")
        assert await get_many(store, ["a", "b", "c"]) == [b"1", None, b"3"]
        memory = MemoryStore()
        await memory.set("a", b"1")
        assert await get_many(memory, ["a", "b"]) == [b"1", None]
    finally:
        await root.aclose()


async def test_unreachable_database_answers_503_problem(tmp_path: Path) -> None:
    import httpx
    from examples.freightops.application import create_app
    from examples.freightops.config import AppConfig

    from freightscale.settings import FreightScaleSettings
    from tests.servers import free_port

    settings = FreightScaleSettings(
        environment="development",
        database={
            "url": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing",
            "connect_timeout": 1,
        },
        auth={"secret": SECRET},
    )
    app = create_app(settings, AppConfig(session_dir=str(tmp_path)))
    token, _ = issue_token(SECRET, user_id=1, tenant_id=1, role="viewer", session_id="s" * 20,
                           ttl=60)  # fmt: skip
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/api/shipments", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "2"
    assert response.json()["reason"] == "unavailable"


async def test_permission_loader_reads_the_roles_table(fo_database_url: str) -> None:
    from examples.freightops.models import Role
    from sqlalchemy import update
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(fo_database_url)
    try:
        load = permission_loader(lambda: engine)
        assert await load("1", frozenset({"driver"})) == ROLE_PERMISSIONS["driver"]
        both = await load("1", frozenset({"driver", "accountant"}))
        assert both == ROLE_PERMISSIONS["driver"] | ROLE_PERMISSIONS["accountant"]
        assert await load("1", frozenset({"no-such-role"})) == frozenset()
        # The table decides, not the built-in grants.
        async with engine.begin() as conn:
            await conn.execute(
                update(Role).where(Role.name == "viewer").values(permissions="shipments:read")
            )
        try:
            assert await load("1", frozenset({"viewer"})) == {"shipments:read"}
        finally:
            async with engine.begin() as conn:
                await conn.execute(
                    update(Role)
                    .where(Role.name == "viewer")
                    .values(permissions=" ".join(sorted(ROLE_PERMISSIONS["viewer"])))
                )
    finally:
        await engine.dispose()


async def test_permission_loader_falls_back_to_built_in_grants_when_db_is_down() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from tests.servers import free_port

    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"
    engine = create_async_engine(url, connect_args={"timeout": 1})
    try:
        load = permission_loader(lambda: engine)
        assert await load("1", frozenset({"dispatcher"})) == ROLE_PERMISSIONS["dispatcher"]
    finally:
        await engine.dispose()


async def test_tenant_requests_are_limited_by_plan(fo_database_url: str, tmp_path: Path) -> None:
    from examples.freightops.application import create_app
    from examples.freightops.config import AppConfig

    from freightscale.settings import FreightScaleSettings

    settings = FreightScaleSettings(
        environment="development",
        database={"url": fo_database_url},
        auth={"secret": SECRET},
    )
    # acme is on the enterprise plan, globex on standard (the seed's first two tenants).
    config = AppConfig(
        session_dir=str(tmp_path),
        plan_limits={"free": "1/hour", "standard": "3/hour", "enterprise": "5/hour"},
    )
    app = create_app(settings, config)
    assert isinstance(app, Stack)
    try:
        await _check_plan_limits(app)
    finally:
        await app.aclose()
        await app.app.services.aclose()  # type: ignore[attr-defined]


async def _check_plan_limits(app: Stack) -> None:
    import httpx
    from examples.freightops.seed import DEMO_PASSWORD

    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        tokens = {}
        for tenant in ("acme", "globex"):
            response = await client.post(
                "/api/auth/login",
                json={"email": f"viewer@{tenant}.example", "password": DEMO_PASSWORD},
            )
            assert response.status_code == 200, response.text
            tokens[tenant] = {"Authorization": f"Bearer {response.json()['access_token']}"}

        async def allowed(tenant: str) -> int:
            for n in range(10):
                response = await client.get("/api/auth/me", headers=tokens[tenant])
                if response.status_code == 429:
                    assert response.headers["content-type"] == "application/problem+json"
                    assert int(response.headers["retry-after"]) >= 1
                    return n
                assert response.status_code == 200, response.text
            return 10

        assert await allowed("globex") == 3
        # Another tenant has its own counter, and its plan's limit.
        assert await allowed("acme") == 5
