"""The FreightOps ASGI app: Starlette routes wrapped by ``build_stack``."""

from __future__ import annotations

import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import freightscale
from freightscale.stack import Stack, build_stack

_STARTED = time.monotonic()


async def status(request: Request) -> JSONResponse:
    """GET /api/v1/status: what this instance is and what it is connected to."""
    stack: Stack = request.scope["freightscale"]["stack"]
    return JSONResponse(
        {
            "service": "freightops",
            "freightscale": freightscale.__version__,
            "environment": stack.settings.environment,
            "uptime_seconds": round(time.monotonic() - _STARTED, 3),
            "redis": "configured" if stack.settings.redis.enabled else "embedded (memory)",
            "components": list(stack.components),
            "request_id": freightscale.get_request_id(),
        }
    )


def create_app(settings: freightscale.FreightScaleSettings | None = None) -> Stack:
    """Build the FreightOps app; ``settings`` default to the environment."""
    routes = [Route("/api/v1/status", status, methods=["GET"])]
    return build_stack(Starlette(routes=routes), settings)


app = create_app()
"""The app for ``uvicorn examples.freightops.app:app``."""
