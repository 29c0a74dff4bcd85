"""CDN integration: the headers CDNs key on, and purges on invalidation."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from freightscale.caching import CacheBackend, ResponseCacheMiddleware
from freightscale.caching.cdn import HttpPurger, PurgeDispatcher
from freightscale.exceptions import StoreUnavailableError
from freightscale.settings.cache import CacheRule, CacheSettings
from freightscale.stores import MemoryStore
from freightscale.stores.redis import RedisStore
from tests.caching.apps import Counter, build
from tests.caching.conftest import Clock
from tests.servers import RedisServer, free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
CDN_HEADERS = ("surrogate-key", "cache-tag", "surrogate-control", "cdn-cache-control")

RULES = (
    CacheRule(path="/shipments", ttl=60, stale_while_revalidate=30, stale_if_error=300,
              tags=("shipments",), cdn=True),
    CacheRule(path="/shipments/{id}", scope="tenant", ttl=20,
              tags=("shipment:{id}", "tenant:{tenant}"), invalidate_on_write=True,
              cdn=True, cdn_scope_keyed=True),
    CacheRule(path="/me", scope="user", cdn=True, cdn_scope_keyed=True),
    CacheRule(path="/tenant", scope="tenant"),
    CacheRule(path="/cookie", cdn=True),
    CacheRule(path="/nostore", cdn=True),
    CacheRule(path="/varies", cdn=True),
)  # fmt: skip


class Recorder:
    """A purge hook that records its calls and can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail = False

    async def __call__(self, tags: Sequence[str]) -> None:
        if self.fail:
            raise ConnectionError("CDN API unreachable")
        self.calls.append(list(tags))


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t")


@pytest.fixture
async def setup(clock: Clock) -> AsyncIterator[Any]:
    counter, hook = Counter(), Recorder()
    app, mw = build(counter, CacheSettings(rules=RULES), clock=clock, purge=hook)
    async with client(app) as c:
        yield c, counter, mw, hook
    await mw.aclose()


async def test_public_rule_emits_every_family_on_miss_hit_and_304(setup: Any) -> None:
    c, counter, _, _ = setup
    miss = await c.get("/shipments")
    assert miss.headers["x-cache"] == "MISS"
    assert miss.headers["surrogate-key"] == "shipments list"
    assert miss.headers["cache-tag"] == "shipments,list"
    control = "max-age=60, stale-while-revalidate=30, stale-if-error=300"
    assert miss.headers["surrogate-control"] == control
    assert miss.headers["cdn-cache-control"] == control
    # No Cache-Control from the app: browsers revalidate, shared caches keep 60 s.
    assert miss.headers["cache-control"] == (
        "max-age=0, s-maxage=60, stale-while-revalidate=30, stale-if-error=300"
    )
    hit = await c.get("/shipments")
    assert hit.headers["x-cache"] == "HIT"
    for name in (*CDN_HEADERS, "cache-control"):
        assert hit.headers[name] == miss.headers[name]
    assert len(hit.headers.get_list("cache-control")) == 1
    not_modified = await c.get("/shipments", headers={"if-none-match": miss.headers["etag"]})
    assert not_modified.status_code == 304
    assert not_modified.headers["cdn-cache-control"] == control
    assert not_modified.headers["cache-control"] == miss.headers["cache-control"]
    assert counter.calls["shipments"] == 1


async def test_cdn_off_by_default_emits_nothing(clock: Clock) -> None:
    rule = CacheRule(path="/shipments", ttl=60, tags=("shipments",))
    app, mw = build(Counter(), CacheSettings(rules=(rule,)), clock=clock)
    async with client(app) as c:
        for _ in range(2):
            r = await c.get("/shipments")
            assert not any(name in r.headers for name in (*CDN_HEADERS, "cache-control"))
    await mw.aclose()


async def test_families_are_chosen_per_rule_and_app_headers_win(clock: Clock) -> None:
    rules = (
        CacheRule(path="/shipments", ttl=60, cdn=True, cdn_headers=("cache-tag", "s-maxage")),
        CacheRule(path="/shipments/{id}", cdn=True, cdn_ttl=3600, cdn_headers=("s-maxage",)),
    )
    counter = Counter()
    app, mw = build(counter, CacheSettings(rules=rules), clock=clock)
    async with client(app) as c:
        r = await c.get("/shipments")
        assert r.headers["cache-tag"] == "shipments,list"
        assert "surrogate-key" not in r.headers
        assert "cdn-cache-control" not in r.headers
        assert r.headers["cache-control"] == "max-age=0, s-maxage=60"
        r = await c.get("/shipments/7")
        assert r.headers["cache-control"] == "max-age=0, s-maxage=3600"  # cdn_ttl wins
        assert "cache-tag" not in r.headers
    await mw.aclose()


async def test_app_cache_control_is_kept_and_bounds_the_ttl(clock: Clock) -> None:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def page(request: Any) -> JSONResponse:
        return JSONResponse({"x": 1}, headers={"cache-control": "public, max-age=10"})

    async def own(request: Any) -> JSONResponse:
        headers = {"cdn-cache-control": "max-age=5", "cache-control": "max-age=1, s-maxage=5"}
        return JSONResponse({"x": 1}, headers=headers)

    app = Starlette(routes=[Route("/page", page), Route("/own", own)])
    rules = (CacheRule(path="/page", ttl=60, cdn=True), CacheRule(path="/own", ttl=60, cdn=True))
    mw = ResponseCacheMiddleware(app, CacheSettings(rules=rules), clock=clock)
    async with client(mw) as c:
        r = await c.get("/page")
        assert r.headers["cache-control"] == "public, max-age=10, s-maxage=10"
        assert r.headers["cdn-cache-control"] == "max-age=10"
        r = await c.get("/own")
        assert r.headers.get_list("cdn-cache-control") == ["max-age=5"]
        assert r.headers["cache-control"] == "max-age=1, s-maxage=5"
        assert r.headers["surrogate-control"] == "max-age=5"
    await mw.aclose()


async def test_rule_vary_headers_reach_the_cdn(clock: Clock) -> None:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def page(request: Any) -> JSONResponse:
        lang = request.headers.get("accept-language", "")
        return JSONResponse({"lang": lang}, headers={"vary": "Accept-Encoding"})

    app = Starlette(routes=[Route("/page", page)])
    rule = CacheRule(path="/page", ttl=60, vary=("Accept-Language",), cdn=True)
    mw = ResponseCacheMiddleware(app, CacheSettings(rules=(rule,)), clock=clock)
    async with client(mw) as c:
        for label in ("MISS", "HIT"):
            r = await c.get("/page", headers={"accept-language": "de"})
            assert r.headers["x-cache"] == label
            assert r.headers.get_list("vary") == ["Accept-Encoding, accept-language"]
        r = await c.get("/page", headers={"accept-language": "fr"})
        assert (r.headers["x-cache"], r.json()) == ("MISS", {"lang": "fr"})
    await mw.aclose()


async def test_never_on_unstorable_or_credentialed_responses(setup: Any) -> None:
    c, _, _, _ = setup
    for path in ("/cookie", "/nostore", "/varies"):
        r = await c.get(path)
        assert r.status_code == 200
        assert not any(name in r.headers for name in CDN_HEADERS), path
        assert "s-maxage" not in r.headers.get("cache-control", ""), path
    # A public rule bypasses credentialed requests: no CDN headers on those.
    r = await c.get("/shipments", headers={"authorization": "Bearer ann@acme"})
    assert r.headers["x-cache"] == "BYPASS"
    assert not any(name in r.headers for name in (*CDN_HEADERS, "cache-control"))


async def test_private_response_of_a_user_rule_stays_private(setup: Any) -> None:
    c, counter, _, _ = setup
    for label in ("MISS", "HIT"):
        r = await c.get("/me", headers={"authorization": "Bearer ann@acme"})
        assert r.headers["x-cache"] == label
        assert r.headers["cache-control"] == "private, max-age=60"
        assert not any(name in r.headers for name in CDN_HEADERS)
    assert counter.calls["me"] == 1


async def test_scope_keyed_tenant_rule_emits_its_tenant_tags(setup: Any) -> None:
    c, _, _, _ = setup
    r = await c.get("/shipments/7", headers={"authorization": "Bearer ann@acme"})
    assert r.headers["surrogate-key"] == "shipment:7 tenant:acme"
    assert r.headers["cdn-cache-control"] == "max-age=20"
    assert r.headers["cache-control"] == "max-age=0, s-maxage=20"


def test_scoped_rule_needs_cdn_scope_keyed() -> None:
    with pytest.raises(ValidationError, match="cdn_scope_keyed"):
        CacheRule(path="/tenant", scope="tenant", cdn=True)
    with pytest.raises(ValidationError, match="cdn_scope_keyed"):
        CacheRule(path="/me", scope="user", cdn=True)
    with pytest.raises(ValidationError, match="cdn_purge_url"):
        CacheSettings(cdn_purge_url="ftp://cdn.example/purge")


async def test_unscoped_tenant_rule_emits_nothing(setup: Any) -> None:
    c, _, _, _ = setup
    for _ in range(2):
        r = await c.get("/tenant", headers={"authorization": "Bearer ann@acme"})
        assert not any(name in r.headers for name in (*CDN_HEADERS, "cache-control"))


async def test_invalidate_and_write_call_the_purge_hook(setup: Any) -> None:
    c, counter, mw, hook = setup
    await c.get("/shipments")
    assert await mw.cache.invalidate(tags=["shipments"]) == 1
    assert hook.calls == [["shipments"]]
    assert (await c.get("/shipments")).headers["x-cache"] == "MISS"
    auth = {"authorization": "Bearer ann@acme"}
    await c.get("/shipments/7", headers=auth)
    r = await c.post("/shipments/7", headers=auth)
    assert r.status_code == 200
    await mw.cache.cdn.drain()
    assert hook.calls[-1] == ["shipment:7", "tenant:acme"]
    assert (await c.get("/shipments/7", headers=auth)).headers["x-cache"] == "MISS"
    assert counter.calls["shipment"] == 2


async def test_failing_hook_never_fails_the_request_and_logs_once(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    c, _, mw, hook = setup
    hook.fail = True
    auth = {"authorization": "Bearer ann@acme"}
    with caplog.at_level(logging.WARNING, logger="freightscale.caching.cdn"):
        for _ in range(3):
            assert (await c.post("/shipments/7", headers=auth)).status_code == 200
            await mw.cache.cdn.drain()
        assert await mw.cache.invalidate(tags=["shipments"]) == 0  # no raise
        failures = [r for r in caplog.records if "purge" in r.getMessage()]
        assert len(failures) == 1
        assert mw.cache.cdn.failing
        hook.fail = False
        await mw.cache.invalidate(tags=["shipments"])
        assert not mw.cache.cdn.failing
        assert "works again" in caplog.records[-1].getMessage()
    assert hook.calls == [["shipments"]]


async def test_slow_hook_is_bounded() -> None:
    async def stuck(tags: Sequence[str]) -> None:
        await asyncio.sleep(30)

    dispatcher = PurgeDispatcher(stuck, timeout=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await dispatcher.purge(["a"]) is False
    assert loop.time() - started < 2


# -- the generic HTTP purger against a real server --------------------------------


@pytest.fixture(scope="module")
def purge_server() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}/src:{ROOT}"}
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "tests.caching.purge_app:app",
            "--port", str(port), "--log-level", "warning", "--no-access-log",
        ],
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    try:
        wait_port(port, 20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def _log(base: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as c:
        entries: list[dict[str, Any]] = (await c.get(f"{base}/log")).json()
        return entries


async def test_http_purger_batches_against_a_real_server(purge_server: str) -> None:
    before = len(await _log(purge_server))
    purger = HttpPurger(
        f"{purge_server}/purge",
        "PURGE",
        headers={"authorization": "Bearer s3cret"},
        batch_size=2,
    )
    await purger([f"t{i}" for i in range(5)])
    await purger.aclose()
    log = (await _log(purge_server))[before:]
    assert [json.loads(e["body"]) for e in log] == [
        {"tags": ["t0", "t1"]},
        {"tags": ["t2", "t3"]},
        {"tags": ["t4"]},
    ]
    assert {e["method"] for e in log} == {"PURGE"}
    assert {e["authorization"] for e in log} == {"Bearer s3cret"}
    assert {e["content_type"] for e in log} == {"application/json"}
    assert "s3cret" not in repr(purger)


async def test_http_purger_custom_body(purge_server: str) -> None:
    before = len(await _log(purge_server))
    purger = HttpPurger(
        f"{purge_server}/purge",
        headers={"content-type": "text/plain"},
        body=lambda tags: " ".join(tags).encode(),
    )
    await purger(["a", "b"])
    await purger.aclose()
    log = (await _log(purge_server))[before:]
    assert [(e["method"], e["body"], e["content_type"]) for e in log] == [
        ("POST", "a b", "text/plain")
    ]


async def test_http_purger_errors_and_timeouts_are_contained(purge_server: str) -> None:
    failing = PurgeDispatcher(HttpPurger(f"{purge_server}/fail"))
    assert await failing.purge(["a"]) is False
    await failing.aclose()
    slow = PurgeDispatcher(HttpPurger(f"{purge_server}/slow", timeout=0.2))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await slow.purge(["a"]) is False
    assert loop.time() - started < 1.5
    await slow.aclose()
    purger = HttpPurger(f"{purge_server}/fail")
    try:
        with pytest.raises(httpx.HTTPStatusError):
            await purger(["a"])
    finally:
        await purger.aclose()


async def test_purge_configured_from_settings_on_write(purge_server: str, clock: Clock) -> None:
    before = len(await _log(purge_server))
    settings = CacheSettings(
        rules=RULES,
        cdn_purge_url=f"{purge_server}/purge",
        cdn_purge_token="tok",  # type: ignore[arg-type]
        cdn_purge_field="surrogate_keys",
    )
    app, mw = build(Counter(), settings, clock=clock)
    assert isinstance(mw.cache.cdn, PurgeDispatcher)
    async with client(app) as c:
        auth = {"authorization": "Bearer ann@acme"}
        assert (await c.post("/shipments/9", headers=auth)).status_code == 200
    await mw.aclose()  # waits for the background purge
    log = (await _log(purge_server))[before:]
    assert [json.loads(e["body"]) for e in log] == [
        {"surrogate_keys": ["shipment:9", "tenant:acme"]}
    ]
    assert log[0]["authorization"] == "Bearer tok"


# -- with the real Redis --------------------------------------------------------


async def test_cdn_headers_and_purge_with_redis(
    redis_url: str, redis_prefix: str, clock: Clock
) -> None:
    store = RedisStore.from_url(redis_url, key_prefix=redis_prefix)
    hook = Recorder()
    backend = CacheBackend(store, CacheSettings(rules=RULES))
    app, mw = build(Counter(), CacheSettings(rules=RULES), backend=backend, clock=clock, purge=hook)
    try:
        async with client(app) as c:
            miss = await c.get("/shipments")
            hit = await c.get("/shipments")
            assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
            assert hit.headers["surrogate-key"] == "shipments list"
            assert hit.headers["cache-control"] == miss.headers["cache-control"]
            assert await backend.invalidate(tags=["list"]) == 1
            assert hook.calls == [["list"]]
            assert (await c.get("/shipments")).headers["x-cache"] == "MISS"
    finally:
        await mw.aclose()
        await store.aclose()


async def test_memory_backend_from_code_hook() -> None:
    hook = Recorder()
    backend = CacheBackend(MemoryStore(), CacheSettings(), purge=hook)
    assert await backend.invalidate(["x", "x", "y"]) == 0
    assert hook.calls == [["x", "y"]]
    backend.set_purge_hook(None)
    await backend.invalidate(["z"])
    assert hook.calls == [["x", "y"]]


async def test_purge_runs_even_when_the_cache_store_is_down(
    redis_server: RedisServer, clock: Clock
) -> None:
    store = RedisStore.from_url(redis_server.url)
    hook = Recorder()
    settings = CacheSettings(rules=RULES, store_timeout=0.5, l1_enabled=False)
    app, mw = build(Counter(), settings, store=store, clock=clock, purge=hook)
    try:
        async with client(app) as c:
            await c.get("/shipments")
            redis_server.stop()
            with pytest.raises(StoreUnavailableError):
                await mw.cache.invalidate(tags=["shipments"])
            assert hook.calls == [["shipments"]]
            r = await c.post("/shipments/3", headers={"authorization": "Bearer ann@acme"})
            assert r.status_code == 200
            await mw.cache.cdn.drain()
            assert hook.calls[-1] == ["shipment:3", "tenant:acme"]
    finally:
        await mw.aclose()
        await store.aclose()
