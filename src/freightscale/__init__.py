"""freightscale: drop-in ASGI components that make a multi-tenant backend scale.

The public surface is re-exported here; everything else is private. Names
are imported on first use (PEP 562), so ``import freightscale`` stays cheap
and loads only the components an application actually touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from freightscale.auth import (
        Authenticator,
        AuthMiddleware,
        TokenIssuer,
        install_tenant_guc,
        require_permission,
    )
    from freightscale.caching import (
        CacheBackend,
        QueryCache,
        ResponseCacheMiddleware,
        add_cache_tags,
        get_response_cache,
    )
    from freightscale.compression import (
        CompressionMiddleware,
        PrecompressedStaticFiles,
    )
    from freightscale.context import (
        Principal,
        get_principal,
        get_request_id,
        get_tenant_id,
    )
    from freightscale.db import (
        Database,
        DatabaseSessionMiddleware,
        DatabaseUnavailableError,
        get_session,
        primary,
    )
    from freightscale.decompression import (
        RequestDecompressionMiddleware,
    )
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
    from freightscale.health import (
        HealthApp,
    )
    from freightscale.responses import (
        FastJSONResponse,
        json_dumps,
    )
    from freightscale.routing import (
        IndexedRouter,
        use_indexed_router,
    )
    from freightscale.sessions import (
        Session,
        SessionMiddleware,
        load_session,
    )
    from freightscale.settings import (
        FreightScaleSettings,
    )
    from freightscale.settings.cache import (
        CacheRule,
    )
    from freightscale.stack import (
        Stack,
        build_stack,
    )
    from freightscale.stores import (
        MemoryStore,
        PostgresStore,
        RedisStore,
        Store,
        store_from_url,
    )
    from freightscale.telemetry import (
        RequestIdLogFilter,
        TelemetryMiddleware,
    )

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "AuthMiddleware": "freightscale.auth",
    "AuthenticationError": "freightscale.exceptions",
    "Authenticator": "freightscale.auth",
    "CacheBackend": "freightscale.caching",
    "CacheRule": "freightscale.settings.cache",
    "CompressionMiddleware": "freightscale.compression",
    "ConfigurationError": "freightscale.exceptions",
    "Database": "freightscale.db",
    "DatabaseSessionMiddleware": "freightscale.db",
    "DatabaseUnavailableError": "freightscale.db",
    "ErrorMiddleware": "freightscale.errors",
    "FastJSONResponse": "freightscale.responses",
    "FreightScaleError": "freightscale.exceptions",
    "FreightScaleSettings": "freightscale.settings",
    "HealthApp": "freightscale.health",
    "IndexedRouter": "freightscale.routing",
    "MemoryStore": "freightscale.stores",
    "MissingDependencyError": "freightscale.exceptions",
    "PermissionDenied": "freightscale.exceptions",
    "PostgresStore": "freightscale.stores",
    "PrecompressedStaticFiles": "freightscale.compression",
    "Principal": "freightscale.context",
    "ProblemResponse": "freightscale.errors",
    "QueryCache": "freightscale.caching",
    "RateLimitExceeded": "freightscale.exceptions",
    "RedisStore": "freightscale.stores",
    "RequestDecompressionMiddleware": "freightscale.decompression",
    "RequestIdLogFilter": "freightscale.telemetry",
    "ResponseCacheMiddleware": "freightscale.caching",
    "Session": "freightscale.sessions",
    "SessionMiddleware": "freightscale.sessions",
    "Stack": "freightscale.stack",
    "Store": "freightscale.stores",
    "StoreError": "freightscale.exceptions",
    "StoreUnavailableError": "freightscale.exceptions",
    "TelemetryMiddleware": "freightscale.telemetry",
    "TokenIssuer": "freightscale.auth",
    "add_cache_tags": "freightscale.caching",
    "build_stack": "freightscale.stack",
    "exception_handlers": "freightscale.errors",
    "get_principal": "freightscale.context",
    "get_request_id": "freightscale.context",
    "get_response_cache": "freightscale.caching",
    "get_session": "freightscale.db",
    "get_tenant_id": "freightscale.context",
    "install_tenant_guc": "freightscale.auth",
    "json_dumps": "freightscale.responses",
    "load_session": "freightscale.sessions",
    "primary": "freightscale.db",
    "problem_response": "freightscale.errors",
    "require_permission": "freightscale.auth",
    "store_from_url": "freightscale.stores",
    "use_indexed_router": "freightscale.routing",
}

__all__ = [
    "AuthMiddleware",
    "AuthenticationError",
    "Authenticator",
    "CacheBackend",
    "CacheRule",
    "CompressionMiddleware",
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
    "PrecompressedStaticFiles",
    "Principal",
    "ProblemResponse",
    "QueryCache",
    "RateLimitExceeded",
    "RedisStore",
    "RequestDecompressionMiddleware",
    "RequestIdLogFilter",
    "ResponseCacheMiddleware",
    "Session",
    "SessionMiddleware",
    "Stack",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "TelemetryMiddleware",
    "TokenIssuer",
    "__version__",
    "add_cache_tags",
    "build_stack",
    "exception_handlers",
    "get_principal",
    "get_request_id",
    "get_response_cache",
    "get_session",
    "get_tenant_id",
    "install_tenant_guc",
    "json_dumps",
    "load_session",
    "primary",
    "problem_response",
    "require_permission",
    "store_from_url",
    "use_indexed_router",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'freightscale' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
