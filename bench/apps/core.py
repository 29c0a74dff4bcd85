"""The core variants: a bare Starlette JSON route, and the same app inside build_stack."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.settings import FreightScaleSettings
from freightscale.stack import build_stack
from freightscale.telemetry import TelemetryMiddleware

PATH = "/json"
"""The path wrk requests."""


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"message": "hello", "items": [1, 2, 3]})


def make_app() -> Starlette:
    """The app every variant wraps: one JSON route."""
    return Starlette(routes=[Route(PATH, hello)])


bare = make_app()

# Everything off: no telemetry; errors + the health router are always there.
stack_off = build_stack(
    make_app(),
    FreightScaleSettings(telemetry={"enabled": False}),  # type: ignore[arg-type]
)

# Telemetry on (request id, span, duration histogram) with no OpenTelemetry SDK.
stack_telemetry = build_stack(make_app(), FreightScaleSettings())

# Just the telemetry middleware around the bare app (no SDK): its cost alone.
telemetry_only = TelemetryMiddleware(make_app())

VARIANTS = {
    "bare": "bare",
    "telemetry-only": "telemetry_only",
    "stack-off": "stack_off",
    "stack-telemetry": "stack_telemetry",
}
"""Variant name -> attribute of this module holding the ASGI app."""

DEFAULT = ("bare", "stack-off", "stack-telemetry")
"""Variants run when ``bench/run.py`` gets no ``--variants``; the first is the baseline."""
