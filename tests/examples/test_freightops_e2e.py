"""End-to-end journeys through real FreightOps servers on PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
from examples.freightops.seed import DEMO_PASSWORD

from tests.examples.conftest import Server

PROBLEM = "application/problem+json"


async def login(client: httpx.AsyncClient, email: str, password: str = DEMO_PASSWORD) -> str:
    response = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(params=["freightscale", "naive"])
def workers(
    request: pytest.FixtureRequest,
) -> tuple[Server, Server]:
    fixture = "fs_workers" if request.param == "freightscale" else "naive_workers"
    pair: tuple[Server, Server] = request.getfixturevalue(fixture)
    return pair


async def test_login_issues_token_and_session_cookie(workers: tuple[Server, Server]) -> None:
    async with httpx.AsyncClient(base_url=workers[0].url, timeout=10) as client:
        response = await client.post(
            "/api/auth/login", json={"email": "dispatcher@acme.example", "password": DEMO_PASSWORD}
        )
        assert response.status_code == 200
        data = response.json()
        assert data["token_type"] == "bearer"
        assert data["user"]["role"] == "dispatcher"
        assert data["user"]["tenant"]["slug"] == "acme"
        assert "fo_session" in response.cookies
        me = await client.get("/api/auth/me", headers=bearer(data["access_token"]))
        assert me.status_code == 200
        assert me.json()["roles"] == ["dispatcher"]
        # The web login: the session cookie alone authenticates too.
        by_cookie = await client.get("/api/auth/me")
        assert by_cookie.status_code == 200
        assert by_cookie.json()["user_id"] == data["user"]["id"]


async def test_wrong_password_and_bad_tokens_get_401_problems(
    workers: tuple[Server, Server],
) -> None:
    async with httpx.AsyncClient(base_url=workers[0].url, timeout=10) as client:
        wrong = await client.post(
            "/api/auth/login", json={"email": "dispatcher@acme.example", "password": "nope"}
        )
        unknown = await client.post(
            "/api/auth/login", json={"email": "nobody@acme.example", "password": "nope"}
        )
        for response in (wrong, unknown):
            assert response.status_code == 401
            assert response.headers["content-type"] == PROBLEM
            assert response.json()["detail"] == "invalid email or password"
        tampered = await client.get("/api/shipments", headers=bearer("abc.def.ghi"))
        assert tampered.status_code == 401
        anonymous = await client.get("/api/shipments")
        assert anonymous.status_code == 401
        malformed = await client.post("/api/auth/login", content=b"{not json")
        assert malformed.status_code == 400


async def test_dispatcher_creates_shipment_and_sees_it_in_the_list_right_after(
    fs_workers: tuple[Server, Server],
) -> None:
    first, second = fs_workers
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=10) as one,
        httpx.AsyncClient(base_url=second.url, timeout=10) as two,
    ):
        token = await login(one, "dispatcher@acme.example")
        warm = await one.get("/api/shipments?limit=10", headers=bearer(token))
        assert warm.status_code == 200
        # The list is cached and shared by both workers through Redis (the
        # entry is stored as the response completes: allow it a moment).
        for _ in range(20):
            again = await two.get("/api/shipments?limit=10", headers=bearer(token))
            if again.headers["x-cache"] in ("HIT", "STALE"):
                break
            await anyio.sleep(0.05)
        assert again.headers["x-cache"] in ("HIT", "STALE")
        assert again.json() == warm.json()
        created = await one.post(
            "/api/shipments",
            headers=bearer(token),
            json={"customer": "E2E Foods", "origin": "Hamburg", "destination": "Vienna",
                  "weight_kg": 1250.5},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        new_id = created.json()["id"]
        # Right after the write, on the same worker: the new shipment is listed.
        after = await one.get("/api/shipments?limit=10", headers=bearer(token))
        assert after.status_code == 200
        assert after.headers["x-cache"] == "MISS"
        assert after.json()["items"][0]["id"] == new_id
        # On the other worker too: its in-process L1 copy is dropped by the
        # Redis pub/sub invalidation message (allow it a moment to arrive).
        for _ in range(20):
            other = await two.get("/api/shipments?limit=10", headers=bearer(token))
            if other.json()["items"][0]["id"] == new_id:
                break
            await anyio.sleep(0.05)
        assert other.json()["items"][0]["id"] == new_id
        detail = await two.get(f"/api/shipments/{new_id}", headers=bearer(token))
        assert detail.json()["customer"] == "E2E Foods"
        timeline = await two.get(f"/api/shipments/{new_id}/events", headers=bearer(token))
        assert [e["kind"] for e in timeline.json()["events"]] == ["created"]
        moved = await one.patch(
            f"/api/shipments/{new_id}/status", headers=bearer(token), json={"status": "booked"}
        )
        assert moved.status_code == 200
        timeline = await two.get(f"/api/shipments/{new_id}/events", headers=bearer(token))
        assert [e["kind"] for e in timeline.json()["events"]] == ["created", "status:booked"]
        invalid = await one.patch(
            f"/api/shipments/{new_id}/status", headers=bearer(token), json={"status": "delivered"}
        )
        assert invalid.status_code == 409
        # Booking with a carrier: the created row (RETURNING) carries its name;
        # another tenant's carrier id is refused.
        carrier = (await one.get("/api/carriers", headers=bearer(token))).json()["items"][0]
        with_carrier = await one.post(
            "/api/shipments",
            headers=bearer(token),
            json={"customer": "E2E Foods", "origin": "Hamburg", "destination": "Graz",
                  "weight_kg": 80, "carrier_id": carrier["id"]},
        )  # fmt: skip
        assert with_carrier.status_code == 201, with_carrier.text
        assert with_carrier.json()["carrier_name"] == carrier["name"]
        assert with_carrier.json()["status"] == "pending"
        globex = bearer(await login(one, "dispatcher@globex.example"))
        theirs = (await one.get("/api/carriers", headers=globex)).json()["items"][0]["id"]
        refused = await one.post(
            "/api/shipments",
            headers=bearer(token),
            json={"customer": "X", "origin": "A", "destination": "B", "weight_kg": 1,
                  "carrier_id": theirs},
        )  # fmt: skip
        assert refused.status_code == 422


async def test_list_filters_and_keyset_pagination(fs_workers: tuple[Server, Server]) -> None:
    async with httpx.AsyncClient(base_url=fs_workers[0].url, timeout=10) as client:
        headers = bearer(await login(client, "viewer@acme.example"))
        page1 = (await client.get("/api/shipments?limit=5", headers=headers)).json()
        page2 = (
            await client.get(
                f"/api/shipments?limit=5&cursor={page1['next_cursor']}", headers=headers
            )
        ).json()
        ids = [s["id"] for s in page1["items"] + page2["items"]]
        assert ids == sorted(ids, reverse=True)
        assert len(set(ids)) == 10
        by_offset = (await client.get("/api/shipments?limit=5&offset=5", headers=headers)).json()
        assert [s["id"] for s in by_offset["items"]] == [s["id"] for s in page2["items"]]
        delivered = (await client.get("/api/shipments?status=delivered", headers=headers)).json()
        assert delivered["items"]
        assert {s["status"] for s in delivered["items"]} == {"delivered"}
        bad = await client.get("/api/shipments?status=lost", headers=headers)
        assert bad.status_code == 400
        assert bad.headers["content-type"] == PROBLEM
        bad_cursor = await client.get("/api/shipments?cursor=abc", headers=headers)
        assert bad_cursor.status_code == 400


async def test_driver_is_forbidden_to_create_invoices(workers: tuple[Server, Server]) -> None:
    async with httpx.AsyncClient(base_url=workers[0].url, timeout=10) as client:
        driver = bearer(await login(client, "driver@acme.example"))
        denied = await client.post(
            "/api/invoices", headers=driver, json={"shipment_id": 1, "amount_cents": 100}
        )
        assert denied.status_code == 403
        assert denied.headers["content-type"] == PROBLEM
        assert "invoices:write" in denied.json()["detail"]
        listing = await client.get("/api/invoices", headers=driver)
        assert listing.status_code == 403
        # A driver may still append tracking events.
        shipments = (await client.get("/api/shipments?limit=1", headers=driver)).json()
        sid = shipments["items"][0]["id"]
        event = await client.post(
            f"/api/shipments/{sid}/events", headers=driver, json={"kind": "checkpoint"}
        )
        assert event.status_code == 201
        accountant = bearer(await login(client, "accountant@acme.example"))
        delivered = (
            await client.get("/api/shipments?status=delivered&limit=1", headers=accountant)
        ).json()["items"][0]["id"]
        invoice = await client.post(
            "/api/invoices",
            headers=accountant,
            json={"shipment_id": delivered, "amount_cents": 990},
        )
        assert invoice.status_code == 201, invoice.text


async def test_tenant_a_cannot_see_tenant_b_shipments(workers: tuple[Server, Server]) -> None:
    async with httpx.AsyncClient(base_url=workers[0].url, timeout=10) as client:
        acme = bearer(await login(client, "admin@acme.example"))
        globex = bearer(await login(client, "admin@globex.example"))
        acme_list = (await client.get("/api/shipments?limit=50", headers=acme)).json()["items"]
        globex_list = (await client.get("/api/shipments?limit=50", headers=globex)).json()["items"]
        acme_ids = {s["id"] for s in acme_list}
        globex_ids = {s["id"] for s in globex_list}
        assert acme_ids
        assert globex_ids
        assert not acme_ids & globex_ids
        assert all(s["reference"].startswith("SH-1-") or s["reference"].startswith("FO-")
                   for s in acme_list)  # fmt: skip
        foreign = next(iter(globex_ids))
        for path in (f"/api/shipments/{foreign}", f"/api/shipments/{foreign}/events"):
            response = await client.get(path, headers=acme)
            assert response.status_code == 404, path
        write = await client.patch(
            f"/api/shipments/{foreign}/status", headers=acme, json={"status": "cancelled"}
        )
        assert write.status_code == 404
        event = await client.post(
            f"/api/shipments/{foreign}/events", headers=acme, json={"kind": "x"}
        )
        assert event.status_code == 404
        # Same URL, other tenant: never the other tenant's (cached) body.
        again = (await client.get("/api/shipments?limit=50", headers=globex)).json()["items"]
        assert {s["id"] for s in again} == globex_ids
        dash_a = (await client.get("/api/dashboard", headers=acme)).json()
        dash_b = (await client.get("/api/dashboard", headers=globex)).json()
        assert (dash_a["tenant_id"], dash_b["tenant_id"]) == (1, 2)
        users = (await client.get("/api/users", headers=acme)).json()["items"]
        assert users
        assert all(u["email"].endswith("@acme.example") for u in users)


async def test_logout_everywhere_revokes_the_token_on_a_second_worker(
    workers: tuple[Server, Server],
) -> None:
    first, second = workers
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=10) as one,
        httpx.AsyncClient(base_url=second.url, timeout=10) as two,
    ):
        token = await login(one, "dispatcher2@acme.example")
        other_device = await login(two, "dispatcher2@acme.example")
        assert (await two.get("/api/auth/me", headers=bearer(token))).status_code == 200
        cookie_session = one.cookies.get("fo_session")
        assert cookie_session
        done = await one.post("/api/auth/logout-everywhere", headers=bearer(token))
        assert done.status_code == 204
        for client in (one, two):
            for credential in (token, other_device):
                refused = await client.get("/api/auth/me", headers=bearer(credential))
                assert refused.status_code == 401, refused.text
                assert refused.headers["content-type"] == PROBLEM
        by_cookie = await two.get(
            "/api/auth/me", headers={"Cookie": f"fo_session={cookie_session}"}
        )
        assert by_cookie.status_code == 401
        # Logging in again works at once.
        fresh = await login(two, "dispatcher2@acme.example")
        assert (await one.get("/api/auth/me", headers=bearer(fresh))).status_code == 200


async def test_web_session_is_shared_by_workers_and_ended_by_a_cookie_logout(
    fs_workers: tuple[Server, Server],
) -> None:
    first, second = fs_workers
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=10) as one,
        httpx.AsyncClient(base_url=second.url, timeout=10) as bare,
    ):
        token = await login(one, "accountant2@acme.example")
        cookie = one.cookies.get("fo_session")
        assert cookie
        assert "." in cookie  # freightscale.sessions: "<id>.<mac>", no data in the cookie
        web = {"Cookie": f"fo_session={cookie}"}
        # The session lives in Redis: the other worker knows it.
        me = await bare.get("/api/auth/me", headers=web)
        assert me.status_code == 200, me.text
        assert me.json()["roles"] == ["accountant"]
        assert "invoices:write" in me.json()["permissions"]
        # A tampered cookie is anonymous, never an error.
        forged = await bare.get("/api/auth/me", headers={"Cookie": f"fo_session={cookie}x"})
        assert forged.status_code == 401
        # Logging out of the browser (cookie only) ends the session and revokes
        # the token issued with it, on every worker.
        out = await bare.post("/api/auth/logout", headers=web)
        assert out.status_code == 204
        assert (await one.get("/api/auth/me", headers=web)).status_code == 401
        assert (await bare.get("/api/auth/me", headers=bearer(token))).status_code == 401


async def test_logout_everywhere_revokes_web_sessions_of_other_devices(
    fs_workers: tuple[Server, Server],
) -> None:
    first, second = fs_workers
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=10) as laptop,
        httpx.AsyncClient(base_url=second.url, timeout=10) as phone,
    ):
        await login(laptop, "viewer3@acme.example")
        web = {"Cookie": f"fo_session={laptop.cookies.get('fo_session')}"}
        phone_token = await login(phone, "viewer3@acme.example")
        assert (await phone.get("/api/auth/me", headers=web)).status_code == 200
        phone.cookies.clear()
        done = await phone.post("/api/auth/logout-everywhere", headers=bearer(phone_token))
        assert done.status_code == 204
        # The laptop's session still exists in the store, but was issued before the cutoff.
        for client in (laptop, phone):
            assert (await client.get("/api/auth/me", headers=web)).status_code == 401


async def test_logout_revokes_only_this_token(workers: tuple[Server, Server]) -> None:
    first, second = workers
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=10) as one,
        httpx.AsyncClient(base_url=second.url, timeout=10) as two,
    ):
        token = await login(one, "viewer2@acme.example")
        other = await login(two, "viewer2@acme.example")
        assert (await one.post("/api/auth/logout", headers=bearer(token))).status_code == 204
        assert (await two.get("/api/auth/me", headers=bearer(token))).status_code == 401
        assert (await two.get("/api/auth/me", headers=bearer(other))).status_code == 200


async def test_freightscale_profile_compresses_and_naive_does_not(
    fs_workers: tuple[Server, Server], naive_workers: tuple[Server, Server]
) -> None:
    for server, expected in ((fs_workers[0], "gzip"), (naive_workers[0], None)):
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            headers = bearer(await login(client, "viewer@acme.example"))
            headers["Accept-Encoding"] = "gzip"
            response = await client.get("/api/shipments?limit=50", headers=headers)
            assert response.status_code == 200
            assert response.headers.get("content-encoding") == expected
            assert len(response.json()["items"]) == 50


async def test_admin_manages_users_of_own_tenant_only(fs_workers: tuple[Server, Server]) -> None:
    async with httpx.AsyncClient(base_url=fs_workers[0].url, timeout=10) as client:
        admin = bearer(await login(client, "admin@globex.example"))
        created = await client.post(
            "/api/users",
            headers=admin,
            json={"email": "new.hire@globex.example", "full_name": "New Hire",
                  "password": "s3cret-pass", "role": "viewer"},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        new = bearer(await login(client, "new.hire@globex.example", "s3cret-pass"))
        me = (await client.get("/api/auth/me", headers=new)).json()
        assert me["tenant_id"] == 2
        assert me["roles"] == ["viewer"]
        acme_admin = bearer(await login(client, "admin@acme.example"))
        foreign = await client.patch(
            f"/api/users/{created.json()['id']}", headers=acme_admin, json={"is_active": False}
        )
        assert foreign.status_code == 404
        duplicate = await client.post(
            "/api/users",
            headers=admin,
            json={"email": "new.hire@globex.example", "full_name": "Again",
                  "password": "s3cret-pass", "role": "viewer"},
        )  # fmt: skip
        assert duplicate.status_code == 409


async def test_embedded_default_starts_with_demo_data(
    server_factory: Callable[..., list[Server]], tmp_path: Path
) -> None:
    [server] = server_factory(
        {
            "FREIGHTSCALE_ENVIRONMENT": "development",
            "FREIGHTOPS_SEED_ON_STARTUP": "true",
            "FREIGHTOPS_SEED_SHIPMENTS": "100",
        },
        cwd=tmp_path,
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        index = (await client.get("/")).json()
        assert index["database"] == "sqlite"
        assert index["profile"] == "freightscale"
        headers = bearer(await login(client, "admin@acme.example"))
        shipments = (await client.get("/api/shipments", headers=headers)).json()["items"]
        assert shipments
        dashboard = await client.get("/api/dashboard", headers=headers)
        assert dashboard.status_code == 200
        assert dashboard.json()["shipments"]
    assert list(tmp_path.glob("*.db"))


async def test_readiness_checks_the_database_and_redis(fs_workers: tuple[Server, Server]) -> None:
    async with httpx.AsyncClient(base_url=fs_workers[0].url, timeout=10) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        checks = ready.json()["checks"]
        assert any(name.startswith("database") for name in checks), checks
        assert any(name.startswith("redis") for name in checks), checks
        status = (await client.get("/api/v1/status")).json()
        assert "database" in status["components"]
        assert status["profile"] == "freightscale"


async def test_cache_never_serves_a_body_to_a_role_without_the_permission(
    fs_workers: tuple[Server, Server],
) -> None:
    async with httpx.AsyncClient(base_url=fs_workers[0].url, timeout=10) as client:
        accountant = bearer(await login(client, "accountant@acme.example"))
        first = await client.get("/api/invoices?limit=5", headers=accountant)
        assert first.status_code == 200
        for _ in range(20):
            second = await client.get("/api/invoices?limit=5", headers=accountant)
            if second.headers["x-cache"] in ("HIT", "STALE"):
                break
            await anyio.sleep(0.05)
        assert second.headers["x-cache"] in ("HIT", "STALE")
        driver = bearer(await login(client, "driver@acme.example"))
        denied = await client.get("/api/invoices?limit=5", headers=driver)
        assert denied.status_code == 403
        # A forged role header is replaced by the verified one.
        forged = await client.get(
            "/api/invoices?limit=5", headers={**driver, "X-FreightOps-Role": "accountant"}
        )
        assert forged.status_code == 403


async def test_shipment_detail_in_one_statement_matches_the_database(
    fs_workers: tuple[Server, Server], fo_database_url: str
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(fo_database_url)
    try:
        async with engine.connect() as conn:
            sid, tenant = (
                await conn.execute(
                    text(
                        "SELECT s.id, s.tenant_id FROM shipments s JOIN tenants t"
                        " ON t.id = s.tenant_id AND t.slug = 'acme'"
                        " WHERE EXISTS (SELECT 1 FROM loads l WHERE l.shipment_id = s.id)"
                        " AND EXISTS (SELECT 1 FROM invoices i WHERE i.shipment_id = s.id)"
                        " ORDER BY s.id LIMIT 1"
                    )
                )
            ).one()
            loads = await conn.execute(
                text("SELECT id, status, truck FROM loads WHERE shipment_id = :s ORDER BY id"),
                {"s": sid},
            )
            invoices = await conn.execute(
                text("SELECT id, number, amount_cents FROM invoices WHERE shipment_id = :s"),
                {"s": sid},
            )
            events = await conn.scalar(
                text("SELECT count(*) FROM tracking_events WHERE shipment_id = :s"), {"s": sid}
            )
            expected_loads = [tuple(r) for r in loads]
            expected_invoices = sorted(tuple(r) for r in invoices)
    finally:
        await engine.dispose()
    async with httpx.AsyncClient(base_url=fs_workers[0].url, timeout=10) as client:
        headers = bearer(await login(client, "viewer@acme.example"))
        detail = (await client.get(f"/api/shipments/{sid}", headers=headers)).json()
    assert detail["id"] == sid
    assert sorted((x["id"], x["status"], x["truck"]) for x in detail["loads"]) == expected_loads
    got = sorted((x["id"], x["number"], x["amount_cents"]) for x in detail["invoices"])
    assert got == expected_invoices
    assert detail["events"] == events
    assert expected_loads  # the query above chose a shipment with children
    assert tenant is not None


async def test_role_scoped_entries_are_shared_by_colleagues_with_the_same_role(
    fs_workers: tuple[Server, Server],
) -> None:
    async with httpx.AsyncClient(base_url=fs_workers[0].url, timeout=10) as client:
        first = bearer(await login(client, "dispatcher@acme.example"))
        colleague = bearer(await login(client, "dispatcher2@acme.example"))
        accountant = bearer(await login(client, "accountant@acme.example"))
        mine = await client.get("/api/carriers", headers=first)
        assert mine.status_code == 200
        theirs = await client.get("/api/carriers", headers=colleague)
        assert theirs.headers["x-cache"] in ("HIT", "STALE")  # one copy per tenant and role
        assert theirs.json() == mine.json()
        other_role = await client.get("/api/carriers", headers=accountant)
        if other_role.status_code == 200:
            assert other_role.headers["x-cache"] == "MISS"  # not the dispatchers' copy
        else:
            assert other_role.status_code == 403


async def test_reads_skip_a_replica_that_is_down(
    worker_envs: dict[str, dict[str, str]], server_factory: Callable[..., list[Server]]
) -> None:
    """A replica out of rotation is never read from: reads fall back to the primary.

    (Before, the example sent every read to the first replica whatever its health.)
    """
    from tests.helpers import free_port

    down = f"postgresql+asyncpg://127.0.0.1:{free_port()}/test"  # nothing listens there
    env = dict(worker_envs["freightscale"], FREIGHTSCALE_DATABASE__REPLICA_URLS=f'["{down}"]')
    (server,) = server_factory(env)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        viewer = bearer(await login(client, "viewer@acme.example"))
        for _ in range(3):
            listing = await client.get("/api/shipments", headers=viewer)
            assert listing.status_code == 200, listing.text
            assert listing.json()["items"]
        ready = await client.get("/readyz")
    assert ready.status_code == 200  # the primary serves; a replica being out is no outage
