"""The app ``auth_bench.py`` serves: one small JSON route behind each auth variant.

``FS_BENCH_VARIANT`` picks it: ``none``, ``hs256-verify``, ``hs256-cached``,
``rs256-verify``, ``rs256-cached``. ``FS_BENCH_KEY`` holds the RSA private key
PEM for RS256 (the verifier derives the public key from it).
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.auth import AuthMiddleware, require_permission
from freightscale.context import get_principal
from freightscale.settings.auth import AuthSettings

SECRET = "bench-secret-" + "x" * 32


async def load_permissions(tenant_id: str | None, roles: frozenset[str]) -> list[str]:
    return ["shipments:*"] if "dispatcher" in roles else []


async def plain(request: Request) -> JSONResponse:
    return JSONResponse({"id": 42, "status": "in_transit", "eta": "2026-12-01"})


@require_permission("shipments:read")
async def guarded(request: Request) -> JSONResponse:
    principal = get_principal(request.scope)
    assert principal is not None
    return JSONResponse({"id": 42, "status": "in_transit", "tenant": principal.tenant_id})


def settings_for(variant: str, key_pem: str = "") -> AuthSettings:
    alg, mode = variant.split("-")
    values: dict[str, Any] = {"enabled": True, "require_auth": True}
    if alg == "hs256":
        values.update(algorithms=["HS256"], secret=SECRET)
    else:
        values.update(algorithms=["RS256"], private_key=key_pem)
    if mode == "verify":  # every request pays for the signature check
        values.update(cache_ttl=0, negative_cache_ttl=0)
    return AuthSettings(**values)


def build(variant: str, key_pem: str = "") -> Any:
    if variant == "none":
        return Starlette(routes=[Route("/json", plain)])
    inner = Starlette(routes=[Route("/json", guarded)])
    return AuthMiddleware(inner, settings_for(variant, key_pem), permission_loader=load_permissions)


app = build(os.environ.get("FS_BENCH_VARIANT", "none"), os.environ.get("FS_BENCH_KEY", ""))
