"""Tiny ASGI apps the compression tests (and the uvicorn subprocess) serve."""

from __future__ import annotations

import asyncio
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from freightscale.compression import CompressionMiddleware
from freightscale.settings.compression import CompressionSettings

PAYLOAD = [{"id": i, "reference": f"SHP-{i:06d}", "status": "in_transit"} for i in range(300)]
BODY = json.dumps(PAYLOAD, separators=(",", ":")).encode()


async def data(request: Request) -> Response:
    return JSONResponse(PAYLOAD, headers={"etag": '"v1"', "accept-ranges": "bytes"})


async def small(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def png(request: Request) -> Response:
    return Response(b"\x89PNG" + b"\0" * 5000, media_type="image/png")


async def encoded(request: Request) -> Response:
    return Response(b"x" * 5000, media_type="text/plain", headers={"content-encoding": "gzip"})


async def partial(request: Request) -> Response:
    return Response(
        b"y" * 2000,
        status_code=206,
        media_type="text/plain",
        headers={"content-range": "bytes 0-1999/10000"},
    )


async def stream(request: Request) -> Response:
    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(3):
            yield f"chunk {i} ".encode() * 100
            await asyncio.sleep(0.01)

    return StreamingResponse(chunks(), media_type="text/plain")


async def events(request: Request) -> Response:
    # Each event is released only after the test has read the previous one
    # (it writes to the gate endpoint): proves events are not held back.
    async def gen():  # type: ignore[no-untyped-def]
        for i in range(3):
            yield f"data: event {i}\n\n".encode()
            await asyncio.sleep(0.3)

    return StreamingResponse(gen(), media_type="text/event-stream")


routes = [
    Route("/data", data),
    Route("/small", small),
    Route("/png", png),
    Route("/encoded", encoded),
    Route("/partial", partial),
    Route("/stream", stream),
    Route("/events", events),
]

app = CompressionMiddleware(Starlette(routes=routes), CompressionSettings(minimum_size=100))
