"""A tiny CDN purge endpoint for the CDN tests (served by uvicorn in a subprocess).

``/purge`` records each request (method, authorization, content type, body) and
answers 200; ``/fail`` answers 500; ``/slow`` answers after 2 s; ``GET /log``
returns the recorded requests.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_log: list[dict[str, Any]] = []
_METHODS = ["POST", "PUT", "DELETE", "PURGE"]


async def purge(request: Request) -> Response:
    _log.append(
        {
            "method": request.method,
            "authorization": request.headers.get("authorization"),
            "content_type": request.headers.get("content-type"),
            "body": (await request.body()).decode(),
        }
    )
    return JSONResponse({"ok": True})


async def fail(request: Request) -> Response:
    await request.body()
    return JSONResponse({"error": "purge backend down"}, status_code=500)


async def slow(request: Request) -> Response:
    await asyncio.sleep(2)
    return JSONResponse({"ok": True})


async def log(request: Request) -> Response:
    return JSONResponse(_log)


app = Starlette(
    routes=[
        Route("/purge", purge, methods=_METHODS),
        Route("/fail", fail, methods=_METHODS),
        Route("/slow", slow, methods=_METHODS),
        Route("/log", log),
    ]
)
