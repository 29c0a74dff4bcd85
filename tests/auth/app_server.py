"""A small app for end-to-end tests: ``uvicorn tests.auth.app_server:app``.

Configured by environment variables so several processes share one Redis:
``FS_AUTH_REDIS_URL``, ``FS_AUTH_PREFIX``, ``FS_AUTH_SYNC_INTERVAL``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.auth import Authenticator, AuthMiddleware, require_permission
from freightscale.backends.redis import create_redis_client
from freightscale.context import get_principal
from freightscale.settings.auth import AuthSettings

SECRET = "s" * 40
settings = AuthSettings(
    enabled=True,
    secret=SECRET,
    key_prefix=os.environ.get("FS_AUTH_PREFIX", "fs"),
    revocation_sync_interval=float(os.environ.get("FS_AUTH_SYNC_INTERVAL", "5")),
)
redis = create_redis_client(os.environ.get("FS_AUTH_REDIS_URL", "redis://127.0.0.1:6379/0"))


async def load_permissions(tenant_id: str | None, roles: frozenset[str]) -> list[str]:
    return ["shipments:*"] if "dispatcher" in roles else ["shipments:read"]


authenticator = Authenticator(settings, redis=redis, permission_loader=load_permissions)


async def me(request: Request) -> JSONResponse:
    principal = get_principal(request.scope)
    return JSONResponse({"user": principal.user_id if principal else None})


async def revoke(request: Request) -> JSONResponse:
    body: dict[str, Any] = await request.json()
    if "jti" in body:
        await authenticator.revocations.revoke_token(body["jti"])
    if "user" in body:
        await authenticator.revocations.revoke_user(body["user"], body.get("tenant"))
    return JSONResponse({"ok": True})


@require_permission("shipments:write")
async def write(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await authenticator.aclose()
    await redis.aclose()


inner = Starlette(
    routes=[
        Route("/me", me),
        Route("/revoke", revoke, methods=["POST"]),
        Route("/shipments", write, methods=["POST"]),
    ],
    lifespan=lifespan,
)
app = AuthMiddleware(inner, authenticator=authenticator)
