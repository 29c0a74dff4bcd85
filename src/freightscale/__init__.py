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
from freightscale.errors import ErrorMiddleware, ProblemResponse, problem_response
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
from freightscale.settings import FreightScaleSettings
from freightscale.stores import MemoryStore, Store, store_from_url

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "Database",
    "DatabaseSessionMiddleware",
    "DatabaseUnavailableError",
    "ErrorMiddleware",
    "FreightScaleError",
    "FreightScaleSettings",
    "MemoryStore",
    "MissingDependencyError",
    "PermissionDenied",
    "Principal",
    "ProblemResponse",
    "RateLimitExceeded",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "__version__",
    "get_principal",
    "get_request_id",
    "get_session",
    "get_tenant_id",
    "primary",
    "problem_response",
    "store_from_url",
]
