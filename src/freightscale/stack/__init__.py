"""``build_stack``: every component in the documented order, plus their resources.

Request path, outermost first (DESIGN.md explains why)::

    1 telemetry  (request id + span)         TelemetryMiddleware
      health endpoints (/healthz, /readyz)   answered here: outside everything below
    2 errors     (problem+json)              ErrorMiddleware
    3 per-IP rate limit                      (not yet)
    4 authentication + tenant context        (not yet)
    5 per-user/tenant rate limit             (not yet)
    5b request decompression                 RequestDecompressionMiddleware
    6 response cache                         (not yet)
    7 compression                            (not yet)
    8 sessions                               (not yet)
    9 the app

Shared resources (the Redis client, later the database engines) are opened
in the ASGI lifespan startup and closed at shutdown, around the wrapped app's
own lifespan. When the server sends no lifespan events, they are opened on
the first request instead (once, under a lock).

Adding a component is one :class:`Component` entry in :data:`COMPONENTS`
(and, if it owns a client, one :class:`Resource` in :data:`RESOURCES`), both
in ``freightscale/stack/layers.py``.
"""

from __future__ import annotations

from freightscale.stack.core import Stack, build_stack
from freightscale.stack.layers import COMPONENTS, RESOURCES, Component, Resource

__all__ = ["COMPONENTS", "RESOURCES", "Component", "Resource", "Stack", "build_stack"]
