"""Token verification through the middleware: good tokens, and every bad input → 401."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest

from freightscale.auth import AuthMiddleware
from freightscale.exceptions import ConfigurationError
from freightscale.settings.auth import AuthSettings
from tests.auth.conftest import SECRET, KeyPair, bearer, claims, hs_settings, hs_token, make_app


async def get(app: Any, headers: dict[str, str], path: str = "/me") -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        return await client.get(path, headers=headers)


def assert_401(response: httpx.Response, description: str | None = None) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    body = response.json()
    assert body["status"] == 401
    if description is not None:
        assert description in body["detail"]
        assert description in challenge


async def test_valid_hs256_token_sets_principal() -> None:
    app = AuthMiddleware(make_app(), hs_settings())
    response = await get(app, bearer(hs_token(scope="shipments:read orders:read")))
    assert response.status_code == 200
    body = response.json()
    assert body["user"] == "user-1"
    assert body["tenant"] == "acme"
    assert body["roles"] == ["dispatcher"]
    assert body["auth_scopes"] == ["orders:read", "shipments:read"]
    assert body["authenticated"] is True


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
async def test_valid_asymmetric_tokens(
    alg: str, rsa_key: KeyPair, ec_key: KeyPair, ed_key: KeyPair
) -> None:
    pair = {"RS256": rsa_key, "PS256": rsa_key, "ES256": ec_key, "EdDSA": ed_key}[alg]
    settings = AuthSettings(enabled=True, algorithms=[alg], public_key=pair.public_pem)
    token = jwt.encode(claims(), pair.key, algorithm=alg)
    response = await get(AuthMiddleware(make_app(), settings), bearer(token))
    assert response.status_code == 200
    assert response.json()["user"] == "user-1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"sig") -> str:
    return ".".join(
        [_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()), _b64(signature)]
    )


@pytest.mark.parametrize(
    ("token", "description"),
    [
        ("abc", "malformed"),
        ("a.b", "malformed"),
        ("a.b.c.d", "malformed"),
        ("!!!.???.***", "malformed"),
        (_b64(b"not json") + "." + _b64(b"{}") + ".x", "malformed"),
        (_b64(b"[1,2]") + "." + _b64(b"{}") + ".x", "malformed"),
        (_forge({"alg": "none", "typ": "JWT"}, claims()).rsplit(".", 1)[0] + ".", "algorithm"),
        (_forge({"alg": "None"}, claims()), "algorithm"),
        (_forge({"alg": "RS256"}, claims()), "algorithm"),  # not in the allowed list
        (_forge({"alg": "HS256"}, claims()), "signature"),
        (_forge({"alg": "HS256", "kid": 5}, claims()), "malformed"),
    ],
    ids=[
        "one-segment", "two-segments", "four-segments", "bad-base64", "non-json-header",
        "non-object-header", "alg-none", "alg-None", "alg-not-allowed", "bad-signature",
        "kid-not-string",
    ],
)  # fmt: skip
async def test_malformed_tokens_get_401(token: str, description: str) -> None:
    app = AuthMiddleware(make_app(), hs_settings())
    assert_401(await get(app, bearer(token)), description)


@pytest.mark.parametrize(
    ("overrides", "description"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
        ({"iss": "https://evil.example"}, "issuer"),
        ({"aud": "someone-else"}, "audience"),
        ({"sub": None}, "'sub'"),
        ({"exp": None}, "'exp'"),
        ({"iat": None}, "'iat'"),
        ({"sub": 42}, "'sub'"),
        ({"tenant": ["a"]}, "'tenant'"),
        ({"roles": "admin"}, "'roles'"),
    ],
    ids=[
        "expired", "not-yet-valid", "wrong-issuer", "wrong-audience", "no-sub", "no-exp",
        "no-iat", "sub-not-string", "tenant-not-string", "roles-not-list",
    ],
)  # fmt: skip
async def test_claim_failures_get_401(overrides: dict[str, Any], description: str) -> None:
    settings = hs_settings(issuer="https://id.example", audience="freightops")
    base = {"iss": "https://id.example", "aud": "freightops"}
    base.update(overrides)
    app = AuthMiddleware(make_app(), settings)
    assert_401(await get(app, bearer(hs_token(**base))), description)


async def test_leeway_accepts_slightly_expired_token() -> None:
    app = AuthMiddleware(make_app(), hs_settings(leeway=60))
    response = await get(app, bearer(hs_token(exp=int(time.time()) - 10)))
    assert response.status_code == 200


async def test_oversized_token_rejected_before_parsing() -> None:
    app = AuthMiddleware(make_app(), hs_settings(max_token_bytes=1024))
    token = hs_token(padding="x" * 2000)
    assert_401(await get(app, bearer(token)), "too large")


async def test_hs256_signed_with_rsa_public_key_is_rejected(rsa_key: KeyPair) -> None:
    """Algorithm confusion: the RS256 public key used as an HMAC secret."""
    settings = AuthSettings(
        enabled=True, algorithms=["RS256", "HS256"], public_key=rsa_key.public_pem, secret=SECRET
    )
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = (
        _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims()).encode())
    ).encode()
    import hashlib
    import hmac

    sig = hmac.new(rsa_key.public_pem.encode(), signing_input, hashlib.sha256).digest()
    token = signing_input.decode() + "." + _b64(sig)
    assert_401(await get(AuthMiddleware(make_app(), settings), bearer(token)), "signature")
    # RS256-only: the forged token's algorithm is not even accepted.
    rs_only = AuthSettings(enabled=True, algorithms=["RS256"], public_key=rsa_key.public_pem)
    assert_401(await get(AuthMiddleware(make_app(), rs_only), bearer(token)), "algorithm")


async def test_es256_token_not_checked_with_rsa_key(rsa_key: KeyPair, ec_key: KeyPair) -> None:
    settings = AuthSettings(
        enabled=True, algorithms=["RS256", "ES256"], public_key=rsa_key.public_pem
    )
    token = jwt.encode(claims(), ec_key.key, algorithm="ES256")
    assert_401(await get(AuthMiddleware(make_app(), settings), bearer(token)), "signing key")


async def test_wrong_secret_rejected() -> None:
    app = AuthMiddleware(make_app(), hs_settings())
    assert_401(await get(app, bearer(hs_token(secret="t" * 40))), "signature")


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"algorithms": ["none"]}, "never accepted"),
        ({"algorithms": ["HS256", "NONE"]}, "never accepted"),
        ({"algorithms": ["XS999"]}, "not one of"),
        ({"secret": "short"}, "32 bytes"),
        ({"tenant_path_pattern": "^/t/([^/]+)"}, "named group"),
    ],
)
def test_settings_reject_unsafe_values(values: dict[str, Any], needle: str) -> None:
    from freightscale.settings import FreightScaleSettings

    with pytest.raises(ConfigurationError, match=needle) as info:
        FreightScaleSettings(auth=values)
    assert "FREIGHTSCALE_AUTH__" in str(info.value)


def test_secret_masked_in_repr() -> None:
    assert SECRET not in repr(hs_settings())
