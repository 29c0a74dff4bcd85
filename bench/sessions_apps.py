"""The apps ``bench/sessions_bench.py`` serves with uvicorn, one variant per process.

``BENCH_VARIANT`` picks one; every variant answers ``GET /`` with the same
small JSON body, and ``GET /login`` creates a session holding that user.

* ``bare``          no sessions (the baseline)
* ``get``           one bare redis-py ``GET`` per request (the floor a Redis session can reach)
* ``get-fs``        the same GET through ``create_redis_client`` (bounded pool, timeouts, retries)
* ``freightscale``  freightscale's SessionMiddleware, Redis backend, ``await load_session``
* ``starsessions``  starsessions' SessionMiddleware + RedisStore, ``await load_session``
"""

from __future__ import annotations

import os
from typing import Any

import redis.asyncio as aioredis
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

VARIANT = os.environ.get("BENCH_VARIANT", "bare")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_PREFIX", "fsbench")
SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
USER = {"user_id": 4711, "tenant": "acme-logistics", "role": "dispatcher"}


def _body(user: Any) -> JSONResponse:
    return JSONResponse({"ok": True, "user": user})


def build(variant: str = VARIANT) -> Any:
    """Return the ASGI app of ``variant``."""
    if variant == "bare":

        async def index(request: Request) -> JSONResponse:
            return _body(USER["user_id"])

        return Starlette(routes=[Route("/", index), Route("/login", index)])

    if variant in ("get", "get-fs"):
        if variant == "get":
            client: Any = aioredis.Redis.from_url(REDIS_URL)
        else:
            from freightscale.backends.redis import create_redis_client

            client = create_redis_client(REDIS_URL)
        key = f"{PREFIX}:get:probe"

        async def index(request: Request) -> JSONResponse:
            await client.get(key)
            return _body(USER["user_id"])

        async def login(request: Request) -> JSONResponse:
            await client.set(key, b'{"user_id":4711}', ex=600)
            return _body(USER["user_id"])

        return Starlette(routes=[Route("/", index), Route("/login", login)])

    if variant == "freightscale":
        from freightscale.sessions import SessionMiddleware, load_session
        from freightscale.settings import RedisSettings, SessionSettings

        async def index(request: Request) -> JSONResponse:
            session = await load_session(request)
            return _body(session.get("user_id"))

        async def login(request: Request) -> JSONResponse:
            session = await load_session(request)
            session.update(USER)
            return _body(session["user_id"])

        inner = Starlette(routes=[Route("/", index), Route("/login", login)])
        return SessionMiddleware(
            inner,
            SessionSettings(secret_keys=[SecretStr(SECRET)], secure=False),
            redis_settings=RedisSettings(url=SecretStr(REDIS_URL), key_prefix=PREFIX),
        )

    if variant == "starsessions":
        from starsessions import SessionMiddleware as StarSessionMiddleware
        from starsessions import load_session as star_load
        from starsessions.stores.redis import RedisStore

        async def index(request: Request) -> JSONResponse:
            await star_load(request)
            return _body(request.session.get("user_id"))

        async def login(request: Request) -> JSONResponse:
            await star_load(request)
            request.session.update(USER)
            return _body(request.session["user_id"])

        inner = Starlette(routes=[Route("/", index), Route("/login", login)])
        store = RedisStore(connection=aioredis.Redis.from_url(REDIS_URL), prefix=f"{PREFIX}:star:")
        return StarSessionMiddleware(
            inner, store=store, lifetime=3600, cookie_https_only=False, rolling=False
        )

    raise SystemExit(f"unknown BENCH_VARIANT {variant!r}")


app = build() if os.environ.get("BENCH_VARIANT") else None
