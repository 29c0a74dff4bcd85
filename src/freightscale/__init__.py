"""freightscale: drop-in ASGI components that make a multi-tenant backend scale.

The public surface is re-exported here; everything else is private.
"""

from __future__ import annotations

from freightscale.context import Principal, get_principal, get_request_id, get_tenant_id
from freightscale.db import (
    Database,
    DatabaseSessionMiddleware,
    DatabaseUnavailableError,
    get_session,
    primary,
)
from freightscale.decompression import RequestDecompressionMiddleware
from freightscale.errors import (
    ErrorMiddleware,
    ProblemResponse,
    exception_handlers,
    problem_response,
)
from freightscale.exceptions import (
    AuthenticationError,
    ConfigurationError,
    FreightScaleError,
    MissingDependencyError,
    PermissionDenied,
    RateLimitExceeded,
    StoreError,
    StoreUnavailableError,
)
from freightscale.health import HealthApp
from freightscale.responses import FastJSONResponse, json_dumps
from freightscale.routing import IndexedRouter, use_indexed_router
from freightscale.settings import FreightScaleSettings
from freightscale.stack import Stack, build_stack
from freightscale.stores import MemoryStore, PostgresStore, RedisStore, Store, store_from_url
from freightscale.telemetry import RequestIdLogFilter, TelemetryMiddleware

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "Database",
    "DatabaseSessionMiddleware",
    "DatabaseUnavailableError",
    "ErrorMiddleware",
    "FastJSONResponse",
    "FreightScaleError",
    "FreightScaleSettings",
    "HealthApp",
    "IndexedRouter",
    "MemoryStore",
    "MissingDependencyError",
    "PermissionDenied",
    "PostgresStore",
    "Principal",
    "ProblemResponse",
    "RateLimitExceeded",
    "RedisStore",
    "RequestDecompressionMiddleware",
    "RequestIdLogFilter",
    "Stack",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "TelemetryMiddleware",
    "__version__",
    "build_stack",
    "exception_handlers",
    "get_principal",
    "get_request_id",
    "get_session",
    "get_tenant_id",
    "json_dumps",
    "primary",
    "problem_response",
    "store_from_url",
    "use_indexed_router",
]
