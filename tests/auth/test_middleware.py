"""Middleware behaviour: anonymous access, required auth, exempt paths, Starlette
compatibility, bare ASGI, websockets, caches, and fuzzed Authorization headers."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freightscale.auth import Authenticator, AuthMiddleware, TokenVerifier
from freightscale.context import get_principal
from freightscale.types import Receive, Scope, Send
from tests.auth.conftest import bearer, hs_settings, hs_token, make_app
from tests.auth.test_verify import assert_401, get


class CountingVerifier(TokenVerifier):
    calls = 0

    async def verify(self, token: str) -> dict[str, Any]:
        type(self).calls += 1
        return await super().verify(token)


def counting(auth: Authenticator) -> type[CountingVerifier]:
    counter = type("Counter", (CountingVerifier,), {"calls": 0})
    auth.verifier.__class__ = counter
    return counter


async def test_anonymous_request_passes_without_principal() -> None:
    app = AuthMiddleware(make_app(), hs_settings())
    response = await get(app, {})
    assert response.status_code == 200
    assert response.json() == {"user": None, "authenticated": False}


async def test_non_bearer_scheme_is_ignored() -> None:
    app = AuthMiddleware(make_app(), hs_settings())
    response = await get(app, {"Authorization": "Basic dXNlcjpwdw=="})
    assert response.json()["user"] is None


async def test_require_auth_gives_401_with_challenge() -> None:
    app = AuthMiddleware(make_app(), hs_settings(require_auth=True, public_paths=["/public"]))
    response = await get(app, {})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'
    assert response.headers["content-type"] == "application/problem+json"
    public = await get(app, {}, "/public/me")
    assert public.status_code == 200
    # A bad token is refused even on a public path.
    assert_401(await get(app, bearer("x.y.z"), "/public/me"))


async def test_exempt_paths_never_look_at_tokens() -> None:
    app = AuthMiddleware(make_app(), hs_settings(require_auth=True))
    response = await get(app, bearer("garbage"), "/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "user": False}


async def test_empty_bearer_is_malformed() -> None:
    app = AuthMiddleware(make_app(), hs_settings())
    assert_401(await get(app, {"Authorization": "Bearer    "}), "malformed")


async def test_starlette_requires_uses_scopes() -> None:
    app = AuthMiddleware(make_app(), hs_settings())
    assert (await get(app, bearer(hs_token(scope="shipments:read")), "/read")).status_code == 200
    assert (await get(app, bearer(hs_token(scope="orders:read")), "/read")).status_code == 403
    assert (await get(app, {}, "/read")).status_code == 403  # anonymous: requires() works too


async def test_bare_asgi_app_sees_principal() -> None:
    seen: list[Any] = []

    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((get_principal(), scope["user"], scope["auth"].scopes))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = AuthMiddleware(bare, hs_settings())
    response = await get(app, bearer(hs_token(roles=["admin"])))
    assert response.status_code == 204
    principal, user, scopes = seen[0]
    assert principal is user
    assert principal.roles == frozenset({"admin"})
    assert scopes == []
    assert get_principal() is None  # the contextvar is reset after the request


async def test_lifespan_passes_through() -> None:
    messages: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        messages.append(scope["type"])

    app = AuthMiddleware(inner, hs_settings(require_auth=True))

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        raise AssertionError("the middleware must not answer lifespan")

    await app({"type": "lifespan"}, receive, send)
    assert messages == ["lifespan"]


async def test_websocket_with_bad_token_is_closed() -> None:
    sent: list[dict[str, Any]] = []
    called = False

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal called
        called = True

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    app = AuthMiddleware(inner, hs_settings())
    scope = {"type": "websocket", "path": "/ws", "headers": [(b"authorization", b"Bearer x.y.z")]}
    await app(scope, receive, send)
    assert not called
    assert sent[0]["type"] == "websocket.close"
    assert sent[0]["code"] == 1008


async def test_verification_is_cached_and_bad_tokens_are_negatively_cached() -> None:
    auth = Authenticator(hs_settings())
    counter = counting(auth)
    app = AuthMiddleware(make_app(), authenticator=auth)
    token = hs_token()
    for _ in range(20):
        assert (await get(app, bearer(token))).status_code == 200
    assert counter.calls == 1
    bad = hs_token(secret="t" * 40)
    for _ in range(20):
        assert_401(await get(app, bearer(bad)), "signature")
    assert counter.calls == 2


async def test_cache_disabled_verifies_every_time() -> None:
    auth = Authenticator(hs_settings(cache_ttl=0, negative_cache_ttl=0))
    counter = counting(auth)
    app = AuthMiddleware(make_app(), authenticator=auth)
    token = hs_token()
    for _ in range(5):
        assert (await get(app, bearer(token))).status_code == 200
    assert counter.calls == 5


async def test_cache_entry_dies_at_token_exp() -> None:
    from freightscale.auth.cache import VerificationCache

    now = [1000.0]
    cache = VerificationCache(ttl=300, clock=lambda: now[0])
    assert cache.expiry_for(1010) == 1010.0
    assert cache.expiry_for(99999) == 1300.0
    assert cache.expiry_for("junk") == 1300.0

    auth = Authenticator(hs_settings(leeway=0))
    app = AuthMiddleware(make_app(), authenticator=auth)
    exp = int(time.time()) + 5  # whole seconds: 4-5 s ahead, never a race with the clock
    token = hs_token(exp=exp)
    assert (await get(app, bearer(token))).status_code == 200
    entry = next(iter(auth.cache._positive.values()))
    assert entry.expires_at <= exp  # the token's exp, not the 300 s cache ttl


@pytest.mark.anyio
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    value=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda b: b"Bearer " + b),
        st.text(max_size=200).map(lambda t: ("Bearer " + t).encode("utf-8", "surrogatepass")),
        st.lists(
            st.text(alphabet="ABCDEFabcdef0123456789-_=+/.", max_size=60), min_size=1, max_size=5
        ).map(lambda parts: b"Bearer " + ".".join(parts).encode()),
    )
)
async def test_random_authorization_headers_never_500(value: bytes) -> None:
    app = AuthMiddleware(make_app(), FUZZ_SETTINGS)
    responses: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        responses.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/me",
        "raw_path": b"/me",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("t", 80),
        "client": ("127.0.0.1", 1),
        "http_version": "1.1",
        "headers": [(b"authorization", value), (b"host", b"t")],
    }
    await app(scope, receive, send)
    status = responses[0]["status"]
    assert status in (200, 401), (value, status)
    if status == 401:
        headers = dict(responses[0]["headers"])
        assert headers[b"www-authenticate"].startswith(b"Bearer ")
        assert headers[b"content-type"] == b"application/problem+json"


FUZZ_SETTINGS = hs_settings()
