"""The token issuer: signs what the verifier accepts, publishes only public keys."""

from __future__ import annotations

import time

import jwt
import pytest

from freightscale.auth import AuthMiddleware, TokenIssuer
from freightscale.exceptions import ConfigurationError
from freightscale.settings.auth import AuthSettings
from tests.auth.conftest import SECRET, KeyPair, bearer, make_app
from tests.auth.test_verify import get


async def test_hs256_issuer_round_trip() -> None:
    settings = AuthSettings(
        enabled=True, secret=SECRET, issuer="https://freightops.test", audience="api",
        access_token_ttl=300,
    )  # fmt: skip
    issuer = TokenIssuer(settings)
    token = issuer.issue("u1", tenant="acme", roles=["viewer", "admin"], scopes=["a", "b"])
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="api")
    assert claims["sub"] == "u1"
    assert claims["tenant"] == "acme"
    assert claims["roles"] == ["admin", "viewer"]
    assert claims["scope"] == "a b"
    assert claims["iss"] == "https://freightops.test"
    assert len(claims["jti"]) == 32
    assert 299 <= claims["exp"] - claims["iat"] <= 300
    assert abs(claims["iat"] - time.time()) < 5
    assert issuer.jwks() == {"keys": []}  # a secret is never published
    response = await get(AuthMiddleware(make_app(), settings), bearer(token))
    assert response.json()["user"] == "u1"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_asymmetric_issuer_and_jwks(
    alg: str, rsa_key: KeyPair, ec_key: KeyPair, ed_key: KeyPair
) -> None:
    pair = {"RS256": rsa_key, "ES256": ec_key, "EdDSA": ed_key}[alg]
    settings = AuthSettings(
        enabled=True, algorithms=[alg], private_key=pair.private_pem, key_id="key-1"
    )
    issuer = TokenIssuer(settings)
    token = issuer.issue("u2", tenant="acme", ttl=60)
    assert jwt.get_unverified_header(token)["kid"] == "key-1"
    document = issuer.jwks()
    (jwk,) = document["keys"]
    assert jwk["kid"] == "key-1"
    assert jwk["alg"] == alg
    assert jwk["use"] == "sig"
    assert "d" not in jwk  # no private material
    key = jwt.PyJWK(jwk).key
    assert jwt.decode(token, key, algorithms=[alg])["sub"] == "u2"
    # A verifier configured with the same settings derives the public key.
    response = await get(AuthMiddleware(make_app(), settings), bearer(token))
    assert response.json()["user"] == "u2"


def test_issuer_rejects_mismatched_key(ec_key: KeyPair) -> None:
    settings = AuthSettings(algorithms=["RS256"], private_key=ec_key.private_pem)
    with pytest.raises(ConfigurationError, match="cannot sign RS256"):
        TokenIssuer(settings)
    with pytest.raises(ConfigurationError, match="PRIVATE_KEY"):
        TokenIssuer(AuthSettings(algorithms=["RS256"], private_key="not a pem"))
    with pytest.raises(ConfigurationError, match="SECRET"):
        TokenIssuer(AuthSettings(algorithms=["HS256"]))
