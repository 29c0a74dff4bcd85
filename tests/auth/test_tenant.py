"""Tenant context: path / header / host checks, and the PostgreSQL GUC hook."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from freightscale.auth import AuthMiddleware, install_tenant_guc
from freightscale.auth.tenant import _literal_prefix
from freightscale.context import Principal, bind_principal
from tests.auth.conftest import bearer, hs_settings, hs_token, make_app
from tests.auth.test_verify import get


async def test_path_for_another_tenant_is_forbidden() -> None:
    app = AuthMiddleware(make_app(), hs_settings())
    token = hs_token(tenant="acme")
    assert (await get(app, bearer(token), "/tenants/acme/orders")).status_code == 200
    response = await get(app, bearer(token), "/tenants/globex/orders")
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert "another tenant" in response.json()["detail"]
    # A token without a tenant cannot reach tenant paths either (deny by default).
    global_token = hs_token(tenant=None)
    assert (await get(app, bearer(global_token), "/tenants/acme/orders")).status_code == 403


async def test_tenant_header_ignored_unless_allowed_then_must_match() -> None:
    token = hs_token(tenant="acme")
    plain = AuthMiddleware(make_app(), hs_settings())
    response = await get(plain, {**bearer(token), "X-Tenant-ID": "globex"})
    assert response.status_code == 200
    assert response.json()["tenant"] == "acme"  # the header never chooses the tenant

    allowed = AuthMiddleware(make_app(), hs_settings(tenant_header="X-Tenant-ID"))
    assert (await get(allowed, {**bearer(token), "X-Tenant-ID": "acme"})).status_code == 200
    mismatch = await get(allowed, {**bearer(token), "X-Tenant-ID": "globex"})
    assert mismatch.status_code == 403


async def test_tenant_host_must_match() -> None:
    app = AuthMiddleware(make_app(), hs_settings(tenant_host_suffix=".freightops.test"))
    token = hs_token(tenant="acme")
    assert (await get(app, {**bearer(token), "Host": "acme.freightops.test"})).status_code == 200
    response = await get(app, {**bearer(token), "Host": "globex.freightops.test:8443"})
    assert response.status_code == 403
    assert (await get(app, {**bearer(token), "Host": "example.org"})).status_code == 200


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url, pool_size=2, max_overflow=0)
    yield engine
    await engine.dispose()


SHOW = text("SELECT current_setting('app.tenant_id', true)")


async def test_guc_hook_on_session_factory(engine: AsyncEngine) -> None:
    factory = async_sessionmaker(engine)
    install_tenant_guc(factory)
    with bind_principal(Principal("u1", tenant_id="acme")):
        async with factory() as session, session.begin():
            assert (await session.execute(SHOW)).scalar() == "acme"
    with bind_principal(Principal("u2", tenant_id="globex")):
        async with factory() as session:
            assert (await session.execute(SHOW)).scalar() == "globex"
            await session.commit()
            # A new transaction of the same session sets it again.
            assert (await session.execute(SHOW)).scalar() == "globex"
    # No tenant: nothing is set, and nothing leaked from the pooled connection.
    async with factory() as session:
        assert (await session.execute(SHOW)).scalar() in (None, "")
    # Another factory on the same engine is not affected.
    async with async_sessionmaker(engine)() as session:
        with bind_principal(Principal("u3", tenant_id="acme")):
            assert (await session.execute(SHOW)).scalar() in (None, "")


async def test_guc_hook_on_session_and_engine(database_url: str) -> None:
    engine = create_async_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with AsyncSession(engine) as session:
            install_tenant_guc(session)
            with bind_principal(Principal("u1", tenant_id="tenant 'quoted'")):
                assert (await session.execute(SHOW)).scalar() == "tenant 'quoted'"
        install_tenant_guc(engine)
        with bind_principal(Principal("u1", tenant_id="acme")):
            async with engine.connect() as conn:
                assert (await conn.execute(SHOW)).scalar() == "acme"
        async with engine.connect() as conn:
            assert (await conn.execute(SHOW)).scalar() in (None, "")
    finally:
        await engine.dispose()


class CustomSession(Session):
    pass


class CustomAsyncSession(AsyncSession):
    sync_session_class = CustomSession


async def test_guc_hook_keeps_a_custom_sync_session_class(engine: AsyncEngine) -> None:
    factory = async_sessionmaker(engine, class_=CustomAsyncSession)
    install_tenant_guc(factory)
    with bind_principal(Principal("u1", tenant_id="acme")):
        async with factory() as session:
            assert isinstance(session.sync_session, CustomSession)
            assert (await session.execute(SHOW)).scalar() == "acme"


def test_guc_hook_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match="session, sessionmaker or engine"):
        install_tenant_guc(object())


async def test_rls_policy_filters_rows(engine: AsyncEngine) -> None:
    """End to end: a row-level-security policy reading app.tenant_id."""
    role = f"fs_rls_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS fs_rls_orders"))
        await conn.execute(text("CREATE TABLE fs_rls_orders (id int, tenant text)"))
        await conn.execute(text("INSERT INTO fs_rls_orders VALUES (1, 'acme'), (2, 'globex')"))
        await conn.execute(text("ALTER TABLE fs_rls_orders ENABLE ROW LEVEL SECURITY"))
        await conn.execute(
            text(
                "CREATE POLICY tenant_only ON fs_rls_orders "
                "USING (tenant = current_setting('app.tenant_id', true))"
            )
        )
        await conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        await conn.execute(text(f"CREATE ROLE {role}"))
        await conn.execute(text(f"GRANT SELECT ON fs_rls_orders TO {role}"))
    factory = async_sessionmaker(engine)
    install_tenant_guc(factory)
    try:
        for tenant, expected in (("acme", [1]), ("globex", [2])):
            with bind_principal(Principal("u", tenant_id=tenant)):
                async with factory() as session:
                    await session.execute(text(f"SET LOCAL ROLE {role}"))
                    rows = await session.execute(text("SELECT id FROM fs_rls_orders ORDER BY id"))
                    assert [r[0] for r in rows] == expected
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE fs_rls_orders"))
            await conn.execute(text(f"DROP ROLE {role}"))


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        (r"^/tenants/(?P<tenant>[^/]+)", "/tenants/"),
        (r"/t/(?P<tenant>\w+)", "/t/"),
        (r"^/orgs?/(?P<tenant>[^/]+)", "/org"),
        (r"^/a{0}b/(?P<tenant>x)", "/"),
        (r"^/x|/y/(?P<tenant>z)", ""),
        (r"(?i)^/tenants/(?P<tenant>[^/]+)", ""),
        (r"^\/t/(?P<tenant>x)", ""),
        (r"^/t.x/(?P<tenant>x)", "/t"),
        (r"{2}/(?P<tenant>x)", ""),
        (r"^*/(?P<tenant>x)", ""),
    ],
)
def test_literal_prefix_examples(pattern: str, prefix: str) -> None:
    assert _literal_prefix(pattern) == prefix


_PIECES = ["^", "a", "b", "/", "-", "_", "1", ".", "*", "+", "?", "{1,2}", "{", "|", "(", ")",
           "[ab]", "[^/]+", "\\d", "\\/", "$", "(?i)", "(?:a)", "(?P<tenant>[^/]+)", " ",
           "#"]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(data=st.data(), pieces=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8))
def test_literal_prefix_never_hides_a_match(data: st.DataObject, pieces: list[str]) -> None:
    pattern = "".join(pieces)
    try:
        compiled = re.compile(pattern)
    except re.error:
        return
    prefix = _literal_prefix(pattern)
    text = data.draw(
        st.one_of(
            st.from_regex(compiled, fullmatch=True),
            st.text(alphabet="ab/-_1.xAB #", max_size=12),
        )
    )
    if compiled.match(text) is not None:
        assert text.startswith(prefix), (pattern, prefix, text)


async def test_paths_outside_the_pattern_prefix_still_check_headers() -> None:
    app = AuthMiddleware(make_app(), hs_settings(tenant_header="X-Tenant-ID"))
    token = hs_token(tenant="acme")
    mismatch = await get(app, {**bearer(token), "X-Tenant-ID": "globex"}, "/me")
    assert mismatch.status_code == 403
    assert (await get(app, bearer(token), "/tenants/globex/orders")).status_code == 403
