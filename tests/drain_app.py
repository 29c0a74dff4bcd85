"""The app ``test_drain.py`` serves under a real uvicorn / Granian (settings from the environment).

``/slow`` sleeps ``DRAIN_TEST_SLOW`` seconds, then PINGs Redis through the
stack's shared client (a closed pool would make it fail) and answers a
64 KiB body. Every step is logged to stderr so the test can check the order.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from freightscale.context import scope_state
from freightscale.stack import Stack, build_stack

SLOW = float(os.environ.get("DRAIN_TEST_SLOW", "1.5"))
BODY = b"x" * 65_536


def say(event: str) -> None:
    print(f"EVENT {event}", file=sys.stderr, flush=True)


async def slow(request: Request) -> Response:
    say("slow start")
    await asyncio.sleep(SLOW)
    stack: Stack = scope_state(request.scope)["stack"]
    redis = stack.redis
    if redis is not None:
        await redis.ping()
    say("slow done")
    return Response(BODY, media_type="application/octet-stream")


async def fast(request: Request) -> PlainTextResponse:
    return PlainTextResponse("fast")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    say("app startup")
    yield
    say("app shutdown")


app = build_stack(Starlette(routes=[Route("/slow", slow), Route("/fast", fast)], lifespan=lifespan))
