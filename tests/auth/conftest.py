"""Fixtures of the auth tests: keys, token factories and a tiny app."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.auth import require_permission
from freightscale.context import get_principal, get_tenant_id
from freightscale.settings.auth import AuthSettings

SECRET = "s" * 40


def _pem_private(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _pem_public(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


class KeyPair:
    def __init__(self, key: Any) -> None:
        self.key = key
        self.private_pem = _pem_private(key)
        self.public_pem = _pem_public(key)


@pytest.fixture(scope="session")
def rsa_key() -> KeyPair:
    return KeyPair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="session")
def rsa_key2() -> KeyPair:
    return KeyPair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="session")
def ec_key() -> KeyPair:
    return KeyPair(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="session")
def ed_key() -> KeyPair:
    return KeyPair(ed25519.Ed25519PrivateKey.generate())


def claims(**overrides: Any) -> dict[str, Any]:
    now = time.time()
    base: dict[str, Any] = {
        "sub": "user-1",
        "tenant": "acme",
        "roles": ["dispatcher"],
        "iat": int(now),
        "exp": int(now) + 600,
        "jti": uuid.uuid4().hex,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs_token(
    secret: str = SECRET, alg: str = "HS256", headers: Any = None, **overrides: Any
) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm=alg, headers=headers)


TokenFactory = Callable[..., str]


def hs_settings(**overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {"enabled": True, "secret": SECRET, "algorithms": ["HS256"]}
    values.update(overrides)
    return AuthSettings(**values)


async def _me(request: Request) -> JSONResponse:
    principal = get_principal(request.scope)
    assert get_principal() is principal  # the contextvar agrees with the scope
    if principal is None:
        return JSONResponse({"user": None, "authenticated": request.user.is_authenticated})
    return JSONResponse(
        {
            "user": principal.user_id,
            "tenant": get_tenant_id(),
            "roles": sorted(principal.roles),
            "permissions": sorted(principal.permissions),
            "auth_scopes": request.auth.scopes,
            "authenticated": request.user.is_authenticated,
        }
    )


@requires("shipments:read")
async def _requires_read(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@require_permission("shipments:write")
async def _write(request: Request) -> JSONResponse:
    return JSONResponse({"written": True})


async def _tenant_path(request: Request) -> JSONResponse:
    return JSONResponse({"tenant": request.path_params["tenant"]})


async def _health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "user": "user" in request.scope})


def make_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/me", _me),
            Route("/public/me", _me),
            Route("/read", _requires_read),
            Route("/shipments", _write, methods=["POST"]),
            Route("/tenants/{tenant}/orders", _tenant_path),
            Route("/healthz", _health),
        ]
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
