"""Property: no response ever carries another tenant's or user's body."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freightscale.settings.cache import CacheRule, CacheSettings
from freightscale.stores import MemoryStore, Store
from tests.caching.apps import Counter, build
from tests.conftest import REDIS_URL

# user, tenant, roles, permissions: ann and bob share a grant, fay's role
# lost a permission (same roles, other permissions), cat and dan differ.
USERS = [
    ("ann", "acme", "dispatcher", "shipments:read"),
    ("bob", "acme", "dispatcher", "shipments:read"),
    ("fay", "acme", "dispatcher", ""),
    ("cat", "globex", "dispatcher", "shipments:read"),
    ("dan", "globex", "admin,dispatcher", "*"),
    ("eve", None, "", ""),
]
PATHS = ["/tenant", "/role", "/me", "/shipments", "/shipments/1"]
RULES = (
    CacheRule(path="/tenant", scope="tenant"),
    CacheRule(path="/role", scope="role"),
    CacheRule(path="/me", scope="user"),
    CacheRule(path="/shipments", scope="public"),
    CacheRule(path="/shipments/{id}", scope="tenant"),
)

request_st = st.tuples(
    st.sampled_from(range(len(USERS))),
    st.sampled_from(PATHS),
    st.sampled_from(["bearer", "cookie", "none"]),
    st.sampled_from([None, "gzip", "br", "evil.example"]),
)


async def _scenario(store: Store, requests: list[tuple[int, str, str, str | None]]) -> None:
    counter = Counter()
    app, mw = build(counter, CacheSettings(rules=RULES), store=store)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:

            async def one(user_i: int, path: str, cred: str, extra: str | None) -> None:
                user, tenant, roles, perms = USERS[user_i]
                headers = {"accept-encoding": "identity"}
                if cred == "bearer":
                    headers["authorization"] = f"Bearer {user}@{tenant or ''}/{roles}/{perms}"
                elif cred == "cookie":
                    headers["cookie"] = "fs_session=opaque"  # credentialed, but no principal
                if extra == "evil.example":
                    headers["x-forwarded-host"] = extra
                elif extra:
                    headers["accept-encoding"] = extra
                resp = await c.get(path, headers=headers)
                assert resp.status_code == 200
                body = resp.json()
                authed = cred == "bearer"
                expected_user = user if authed else None
                expected_tenant = tenant if authed else None
                shared_by_tenant = path in ("/tenant", "/shipments/1", "/role") and authed
                # Whatever was served (hit or miss) belongs to the requester; a
                # tenant- or role-scoped entry may have been written by a colleague.
                assert body["tenant"] == expected_tenant
                if shared_by_tenant:
                    assert any(u[:2] == (body["user"], tenant) for u in USERS)
                else:
                    assert body["user"] == expected_user
                if path == "/role" and authed:
                    # Only a colleague with the same roles and permissions.
                    assert body["roles"] == sorted(filter(None, roles.split(",")))
                    assert body["permissions"] == sorted(filter(None, perms.split(",")))
                if path == "/shipments":
                    assert body["fwd"] is None  # unkeyed header never reached the app

            # Interleave: run the sequence in small concurrent groups.
            for i in range(0, len(requests), 4):
                await asyncio.gather(*(one(*r) for r in requests[i : i + 4]))
    finally:
        await mw.aclose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(request_st, min_size=1, max_size=24))
def test_isolation_memory(requests: list[tuple[int, str, str, str | None]]) -> None:
    asyncio.run(_scenario(MemoryStore(max_bytes=1 << 22), requests))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(request_st, min_size=1, max_size=24))
def test_isolation_redis(requests: list[tuple[int, str, str, str | None]]) -> None:
    from freightscale.stores.redis import RedisStore

    async def run() -> None:
        store = RedisStore.from_url(REDIS_URL, key_prefix=f"fstest-iso-{uuid.uuid4().hex[:10]}")
        try:
            await _scenario(store, requests)
        finally:
            await store.with_namespace("cache").delete_all()
            await store.aclose()

    asyncio.run(run())
