"""JWKS key source against a real local HTTP server the test starts."""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from freightscale.auth import AuthMiddleware, TokenIssuer
from freightscale.settings.auth import AuthSettings
from tests.auth.conftest import KeyPair, bearer, claims, make_app
from tests.auth.test_verify import assert_401, get
from tests.servers import free_port


class Provider:
    """A tiny identity provider serving a JWKS document, counting requests."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.mode = "ok"
        self.requests = 0
        self.port = free_port()

        async def jwks(request: Request) -> Response:
            self.requests += 1
            if self.mode == "down":
                return Response("unavailable", status_code=503)
            if self.mode == "garbage":
                return Response(b"\x00{not json", media_type="application/json")
            if self.mode == "wrong-shape":
                return JSONResponse({"keys": "nope"})
            return JSONResponse(self.document)

        app = Starlette(routes=[Route("/jwks.json", jwks)])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def start(self) -> Provider:
        self.thread.start()
        from tests.servers import wait_port

        wait_port(self.port)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider().start()
    yield p
    p.stop()


def jwk_of(pair: KeyPair, kid: str) -> dict[str, Any]:
    issuer = TokenIssuer(
        AuthSettings(algorithms=["RS256"], private_key=pair.private_pem, key_id=kid)
    )
    return issuer.jwks()["keys"][0]


def token(pair: KeyPair, kid: str | None, **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**overrides), pair.key, algorithm="RS256", headers=headers)


def settings_for(provider: Provider, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "algorithms": ["RS256"],
        "jwks_url": provider.url,
        "jwks_timeout": 2.0,
    }
    values.update(overrides)
    return AuthSettings(**values)


async def test_jwks_fetched_once_and_cached(provider: Provider, rsa_key: KeyPair) -> None:
    provider.document = {"keys": [jwk_of(rsa_key, "k1")]}
    app = AuthMiddleware(make_app(), settings_for(provider))
    try:
        for _ in range(10):
            response = await get(app, bearer(token(rsa_key, "k1")))
            assert response.status_code == 200
        assert provider.requests == 1
    finally:
        await app.aclose()


async def test_unknown_kid_flood_refetches_at_most_once_per_interval(
    provider: Provider, rsa_key: KeyPair
) -> None:
    provider.document = {"keys": [jwk_of(rsa_key, "k1")]}
    app = AuthMiddleware(make_app(), settings_for(provider, jwks_min_refresh_interval=60))
    try:
        assert (await get(app, bearer(token(rsa_key, "k1")))).status_code == 200
        for _ in range(30):
            assert_401(await get(app, bearer(token(rsa_key, uuid.uuid4().hex))), "signing key")
        # The first fetch counts against the interval too: no refetch at all.
        assert provider.requests == 1
    finally:
        await app.aclose()


async def test_rotated_key_is_picked_up_on_unknown_kid(
    provider: Provider, rsa_key: KeyPair, rsa_key2: KeyPair
) -> None:
    provider.document = {"keys": [jwk_of(rsa_key, "k1")]}
    app = AuthMiddleware(make_app(), settings_for(provider, jwks_min_refresh_interval=0))
    try:
        assert (await get(app, bearer(token(rsa_key, "k1")))).status_code == 200
        provider.document = {"keys": [jwk_of(rsa_key, "k1"), jwk_of(rsa_key2, "k2")]}
        assert (await get(app, bearer(token(rsa_key2, "k2")))).status_code == 200
        assert provider.requests == 2
        # A token signed by key 2 but claiming kid k1 does not verify.
        assert_401(await get(app, bearer(token(rsa_key2, "k1"))), "signature")
    finally:
        await app.aclose()


@pytest.mark.parametrize("failure", ["down", "garbage", "wrong-shape", "stopped"])
async def test_provider_failure_serves_last_good_copy(
    provider: Provider, rsa_key: KeyPair, failure: str
) -> None:
    provider.document = {"keys": [jwk_of(rsa_key, "k1")]}
    settings = settings_for(provider, jwks_min_refresh_interval=0, jwks_max_age=0.001)
    app = AuthMiddleware(make_app(), settings)
    try:
        assert (await get(app, bearer(token(rsa_key, "k1")))).status_code == 200
        if failure == "stopped":
            provider.stop()
        else:
            provider.mode = failure
        # Stale copy: a background refresh fails, the old keys keep verifying.
        for _ in range(3):
            assert (await get(app, bearer(token(rsa_key, "k1")))).status_code == 200
        # An unknown kid triggers a (failing) fetch and still gets a clean 401.
        assert_401(await get(app, bearer(token(rsa_key, "other"))), "signing key")
        if failure != "stopped":
            assert provider.requests >= 2
    finally:
        await app.aclose()


@pytest.mark.parametrize("failure", ["down", "garbage", "wrong-shape"])
async def test_provider_failing_from_the_start_gives_401(
    provider: Provider, rsa_key: KeyPair, failure: str
) -> None:
    provider.mode = failure
    app = AuthMiddleware(make_app(), settings_for(provider, jwks_min_refresh_interval=60))
    try:
        for _ in range(5):
            assert_401(await get(app, bearer(token(rsa_key, "k1"))), "signing key")
        assert provider.requests == 1  # the outage is not hammered either
        provider.mode = "ok"
    finally:
        await app.aclose()


async def test_jwks_hmac_and_encryption_keys_are_ignored(
    provider: Provider, rsa_key: KeyPair
) -> None:
    enc = dict(jwk_of(rsa_key, "enc"), use="enc")
    secret = "k" * 40
    oct_key = {"kty": "oct", "k": base64.urlsafe_b64encode(secret.encode()).decode(), "kid": "k1"}
    provider.document = {"keys": [oct_key, enc]}
    app = AuthMiddleware(make_app(), settings_for(provider))
    try:
        forged = jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": "k1"})
        assert_401(await get(app, bearer(forged)), "algorithm")
        assert_401(await get(app, bearer(token(rsa_key, "enc"))), "signing key")
    finally:
        await app.aclose()


async def test_token_without_kid_uses_the_only_key(provider: Provider, rsa_key: KeyPair) -> None:
    provider.document = {"keys": [jwk_of(rsa_key, "k1")]}
    app = AuthMiddleware(make_app(), settings_for(provider))
    try:
        assert (await get(app, bearer(token(rsa_key, None)))).status_code == 200
    finally:
        await app.aclose()
