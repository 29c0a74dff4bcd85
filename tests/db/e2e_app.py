"""The app ``test_e2e.py`` serves with a real uvicorn (settings from the environment)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from freightscale.db import Database, DatabaseSessionMiddleware, get_session
from freightscale.settings import FreightScaleSettings

db = Database(FreightScaleSettings().database)


async def sleep(request: Request) -> PlainTextResponse:
    seconds = float(request.query_params["s"])
    await get_session(request).execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
    return PlainTextResponse("slept")


async def stream(request: Request) -> StreamingResponse:
    session = get_session(request)

    async def rows() -> AsyncIterator[bytes]:
        for i in range(10_000):
            value = await session.scalar(text("SELECT CAST(:i AS int)"), {"i": i})
            yield f"{value}\n".encode() * 100
            await anyio.sleep(0.005)

    return StreamingResponse(rows())


async def pool(request: Request) -> JSONResponse:
    return JSONResponse({"checked_out": db.engines.primary.pool.checkedout()})  # type: ignore[attr-defined]


inner = Starlette(
    routes=[Route("/sleep", sleep), Route("/stream", stream), Route("/pool", pool)],
    lifespan=lambda app: db.lifespan(check_budget=False),
)
app = DatabaseSessionMiddleware(inner, database=db)
