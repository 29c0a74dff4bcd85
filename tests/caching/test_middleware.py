from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from freightscale.caching import CacheBackend, ResponseCacheMiddleware
from freightscale.caching.rules import cache_key, normalize_accept_encoding
from freightscale.settings.cache import CacheRule, CacheSettings
from freightscale.stores import Store
from tests.caching.apps import RULES, Counter, build
from tests.caching.conftest import Clock


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t")


@pytest.fixture
async def setup(store: Store, clock: Clock):  # type: ignore[no-untyped-def]
    counter = Counter()
    app, mw = build(
        counter, CacheSettings(rules=RULES, max_body_bytes=5000), store=store, clock=clock
    )
    async with client(app) as c:
        yield c, counter, mw, clock
    await mw.aclose()


async def test_miss_then_hit_with_age(setup) -> None:  # type: ignore[no-untyped-def]
    c, counter, _, clock = setup
    first = await c.get("/shipments")
    assert first.headers["x-cache"] == "MISS"
    assert "cache-tag" not in first.headers  # tags never leak to clients
    clock.advance(7)
    second = await c.get("/shipments")
    assert second.headers["x-cache"] == "HIT"
    assert second.headers["age"] == "7"
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    assert counter.calls["shipments"] == 1
    head = await c.head("/shipments")
    assert head.headers["x-cache"] == "HIT"
    assert head.content == b""


async def test_query_is_normalized(setup) -> None:  # type: ignore[no-untyped-def]
    c, _counter, _, _ = setup
    await c.get("/shipments?b=2&a=1")
    assert (await c.get("/shipments?a=1&b=2")).headers["x-cache"] == "HIT"
    assert (await c.get("/shipments?a=1&b=3")).headers["x-cache"] == "MISS"


async def test_if_none_match_gives_304(setup) -> None:  # type: ignore[no-untyped-def]
    c, _counter, _, _ = setup
    first = await c.get("/shipments")
    etag = first.headers["etag"]
    assert etag.startswith('"')  # strong, from the body hash
    again = await c.get("/shipments", headers={"if-none-match": f'"other", {etag}'})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert (await c.get("/shipments", headers={"if-none-match": '"nope"'})).status_code == 200


@pytest.mark.parametrize("path", ["/cookie", "/nostore", "/big", "/varies"])
async def test_never_stored(setup, path: str) -> None:  # type: ignore[no-untyped-def]
    c, counter, _, _ = setup
    for _ in range(2):
        resp = await c.get(path)
        assert resp.headers["x-cache"] == "MISS"
    assert counter.calls[path.strip("/")] == 2
    if path == "/big":
        assert resp.content == b"x" * 10_000  # streamed through intact


async def test_private_only_for_user_rules(setup) -> None:  # type: ignore[no-untyped-def]
    c, _counter, _, _ = setup
    auth = {"authorization": "Bearer ann@acme"}
    await c.get("/me", headers=auth)
    hit = await c.get("/me", headers=auth)
    assert hit.headers["x-cache"] == "HIT"
    assert (hit.json()["user"], hit.json()["tenant"]) == ("ann", "acme")
    other = await c.get("/me", headers={"authorization": "Bearer bob@acme"})
    assert other.headers["x-cache"] == "MISS"
    assert other.json()["user"] == "bob"


async def test_private_response_on_public_rule_is_not_stored(store: Store) -> None:
    counter = Counter()
    settings = CacheSettings(rules=(CacheRule(path="/me"),))
    app, mw = build(counter, settings, store=store)
    async with client(app) as c:
        await c.get("/me")
        assert (await c.get("/me")).headers["x-cache"] == "MISS"
    assert counter.calls["me"] == 2
    await mw.aclose()


async def test_credentials_bypass_public_rules(setup) -> None:  # type: ignore[no-untyped-def]
    c, counter, _, _ = setup
    await c.get("/shipments")  # public entry written anonymously
    for headers in ({"authorization": "Bearer ann@acme"}, {"cookie": "theme=dark; fs_session=abc"}):
        resp = await c.get("/shipments", headers=headers)
        assert resp.headers["x-cache"] == "BYPASS"
    assert (await c.get("/shipments", headers={"cookie": "theme=dark"})).headers["x-cache"] == "HIT"
    # The authenticated request ran the handler and saw its own principal.
    assert counter.calls["shipments"] == 3


async def test_tenant_scope_separates_tenants(setup) -> None:  # type: ignore[no-untyped-def]
    c, _counter, _, _ = setup
    a = await c.get("/tenant", headers={"authorization": "Bearer ann@acme"})
    b = await c.get("/tenant", headers={"authorization": "Bearer bob@globex"})
    a2 = await c.get("/tenant", headers={"authorization": "Bearer carl@acme"})
    assert a.json()["tenant"] == "acme"
    assert b.json()["tenant"] == "globex"
    assert b.headers["x-cache"] == "MISS"
    assert a2.headers["x-cache"] == "HIT"
    assert a2.json()["tenant"] == "acme"
    anon = await c.get("/tenant")
    assert anon.headers["x-cache"] == "BYPASS"


async def test_unkeyed_headers_cannot_poison(setup) -> None:  # type: ignore[no-untyped-def]
    c, _counter, _, _ = setup
    evil = await c.get("/shipments", headers={"x-forwarded-host": "evil.example"})
    assert evil.json()["fwd"] is None  # the app never saw it
    clean = await c.get("/shipments")
    assert clean.headers["x-cache"] == "HIT"
    assert "evil" not in clean.text


async def test_stale_while_revalidate(setup) -> None:  # type: ignore[no-untyped-def]
    c, counter, mw, clock = setup
    assert (await c.get("/shipments")).json()["v"] == 1
    counter.version = 2
    clock.advance(61)  # past ttl=60, inside swr=30
    stale = await c.get("/shipments")
    assert stale.headers["x-cache"] == "STALE"
    assert stale.json()["v"] == 1
    for _ in range(100):  # the background refresh
        await asyncio.sleep(0.01)
        if not mw._refreshing:
            break
    fresh = await c.get("/shipments")
    assert fresh.headers["x-cache"] == "HIT"
    assert fresh.json()["v"] == 2
    assert counter.calls["shipments"] == 2


@pytest.mark.parametrize("failure", ["raise", "503"])
async def test_stale_if_error(setup, failure: str) -> None:  # type: ignore[no-untyped-def]
    c, counter, _, clock = setup
    await c.get("/shipments")
    clock.advance(200)  # past ttl + swr, inside stale_if_error
    if failure == "raise":
        counter.fail = True
    else:
        counter.status = 503
    resp = await c.get("/shipments")
    assert resp.status_code == 200
    assert resp.headers["x-cache"] == "STALE"
    assert resp.json()["v"] == 1
    clock.advance(400)  # past stale_if_error: the failure shows
    counter.fail = False
    if failure == "503":
        assert (await c.get("/shipments")).status_code == 503


async def test_tags_and_invalidation(setup) -> None:  # type: ignore[no-untyped-def]
    c, _counter, mw, _ = setup
    auth = {"authorization": "Bearer ann@acme"}
    await c.get("/shipments")
    await c.get("/shipments/1", headers=auth)
    await c.get("/shipments/2", headers=auth)
    assert await mw.cache.invalidate(["list"]) == 1  # from the Cache-Tag header
    assert (await c.get("/shipments")).headers["x-cache"] == "MISS"
    assert (await c.get("/shipments/2", headers=auth)).headers["x-cache"] == "HIT"
    # add_cache_tags() from the handler, and the rule's {id} template
    assert await mw.cache.invalidate(["shipment:2"]) == 1
    assert (await c.get("/shipments/2", headers=auth)).headers["x-cache"] == "MISS"
    assert (await c.get("/shipments/1", headers=auth)).headers["x-cache"] == "HIT"


async def test_invalidate_on_write(setup) -> None:  # type: ignore[no-untyped-def]
    c, _counter, _, _ = setup
    auth = {"authorization": "Bearer ann@acme"}
    assert (await c.get("/shipments/1", headers=auth)).json()["v"] == 1
    assert (await c.post("/shipments/1", headers=auth)).status_code == 200
    after = await c.get("/shipments/1", headers=auth)
    assert after.headers["x-cache"] == "MISS"
    assert after.json()["v"] == 2


async def test_single_flight_200_concurrent_misses(setup) -> None:  # type: ignore[no-untyped-def]
    c, counter, _, _ = setup
    counter.delay = 0.2
    responses = await asyncio.gather(*(c.get("/shipments") for _ in range(200)))
    assert counter.calls["shipments"] == 1
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert sorted({r.headers["x-cache"] for r in responses}) == ["HIT", "MISS"]


async def test_corrupt_entry_is_a_miss(store: Store) -> None:
    counter = Counter()
    backend = CacheBackend(store, CacheSettings(rules=RULES))
    app, mw = build(counter, CacheSettings(rules=RULES), backend=backend)
    async with client(app) as c:
        gz = {"accept-encoding": "gzip"}
        await c.get("/shipments", headers=gz)
        assert not mw.flight._calls  # flights end with their request
        k = cache_key(
            scope_kind="public", scope_id="", host="t", root_path="", path="/shipments",
            query_string=b"", vary_values=[], accept_encoding=normalize_accept_encoding("gzip"),
        )  # fmt: skip
        assert await backend.store.exists(k)
        await backend.store.set(k, b"garbage", expires_in=60)
        if backend.l1 is not None:
            backend.l1.clear()
        resp = await c.get("/shipments", headers=gz)
        assert resp.status_code == 200
        assert resp.headers["x-cache"] == "MISS"
    await mw.aclose()


async def test_non_http_passes_through() -> None:
    seen = []

    async def inner(scope, receive, send):  # type: ignore[no-untyped-def]
        seen.append(scope["type"])

    mw = ResponseCacheMiddleware(inner, CacheSettings(rules=RULES))
    await mw({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]
    assert json.dumps(seen)


async def test_request_no_cache_only_when_honoured(store: Store) -> None:
    for honour in (False, True):
        counter = Counter()
        settings = CacheSettings(rules=RULES, honor_request_no_cache=honour)
        app, mw = build(counter, settings, store=store.with_namespace(f"h{honour}"))
        async with client(app) as c:
            await c.get("/shipments")
            resp = await c.get("/shipments", headers={"cache-control": "no-cache"})
            assert resp.headers["x-cache"] == ("MISS" if honour else "HIT")
            resp = await c.get("/shipments", headers={"cache-control": "no-store"})
            assert resp.headers["x-cache"] == ("BYPASS" if honour else "HIT")
        await mw.aclose()


async def test_unstorable_stream_is_not_buffered() -> None:
    release = asyncio.Event()
    received: list[bytes] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        headers = [(b"content-type", b"text/plain"), (b"set-cookie", b"a=b")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await release.wait()
        await send({"type": "http.response.body", "body": b"last"})

    mw = ResponseCacheMiddleware(app, CacheSettings(rules=(CacheRule(path="/s"),)))
    scope = {"type": "http", "method": "GET", "path": "/s", "headers": [], "query_string": b""}

    async def receive():  # type: ignore[no-untyped-def]
        return {"type": "http.request", "body": b""}

    async def send(message):  # type: ignore[no-untyped-def]
        if message["type"] == "http.response.body":
            received.append(message["body"])
            release.set()  # only reachable if "first" arrived before the end

    await asyncio.wait_for(mw(scope, receive, send), 5)
    assert received == [b"first", b"last"]


async def test_fastapi_app(store: Store) -> None:
    from fastapi import FastAPI

    api = FastAPI()
    calls = []

    @api.get("/carriers")
    async def carriers() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    mw = ResponseCacheMiddleware(
        api, CacheSettings(rules=(CacheRule(path="/carriers"),)), store=store
    )
    async with client(mw) as c:
        assert (await c.get("/carriers")).json() == {"n": 1}
        hit = await c.get("/carriers")
        assert hit.json() == {"n": 1}
        assert hit.headers["x-cache"] == "HIT"
    await mw.aclose()


async def test_store_factory_is_resolved_on_first_request(store: Store) -> None:
    calls = []

    def factory() -> Store:
        calls.append(1)
        return store

    counter = Counter()
    app, mw = build(counter, CacheSettings(rules=RULES), store=factory)
    assert calls == []  # nothing opened at build time
    assert "not opened" in repr(mw.cache)
    async with client(app) as c:
        await c.get("/shipments")
        assert (await c.get("/shipments")).headers["x-cache"] == "HIT"
    assert calls == [1]
    await mw.aclose()


async def test_role_scope_shares_only_the_same_grant(setup) -> None:  # type: ignore[no-untyped-def]
    c, counter, _, _ = setup

    async def get(who: str) -> tuple[str, dict[str, object]]:
        resp = await c.get("/role", headers={"authorization": f"Bearer {who}"})
        return resp.headers["x-cache"], resp.json()

    assert (await get("ann@acme/dispatcher/shipments:read"))[0] == "MISS"
    label, body = await get("bob@acme/dispatcher/shipments:read")
    assert label == "HIT"
    assert body["user"] == "ann"
    # Same roles but other permissions (the role was changed): not shared.
    label, body = await get("fay@acme/dispatcher/")
    assert label == "MISS"
    assert body["user"] == "fay"
    # Other roles, or another tenant: not shared.
    label, body = await get("gus@acme/admin,dispatcher/shipments:read")
    assert label == "MISS"
    assert body["user"] == "gus"
    label, body = await get("cat@globex/dispatcher/shipments:read")
    assert label == "MISS"
    assert body["tenant"] == "globex"
    # No tenant: nothing to key on, bypassed.
    assert (await get("eve@/dispatcher/shipments:read"))[0] == "BYPASS"
    assert counter.calls["tenant"] == 5
