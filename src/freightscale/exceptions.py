"""The freightscale exception tree.

Every error freightscale raises on purpose is one of these::

    FreightScaleError
    ├── ConfigurationError        (also a ValueError) a setting is invalid
    ├── MissingDependencyError    (also an ImportError) an optional extra is absent
    ├── StoreError                a Redis / PostgreSQL / memory store call failed
    │   └── StoreUnavailableError the backend is down or timed out
    ├── AuthenticationError       401: no, bad or revoked credentials
    ├── PermissionDenied          403: authenticated, but not allowed
    └── RateLimitExceeded         429: over a rate limit

Driver errors (redis-py, asyncpg, SQLAlchemy) are translated into
``StoreError`` at one choke point per backend and chained with ``from``, so
callers never catch a driver's exception type.

Each HTTP-facing error carries ``status_code``; the error middleware turns it
into an RFC 9457 problem+json response.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "FreightScaleError",
    "MissingDependencyError",
    "PermissionDenied",
    "RateLimitExceeded",
    "StoreError",
    "StoreUnavailableError",
]


class FreightScaleError(Exception):
    """Base class of every error freightscale raises on purpose."""

    status_code: int = 500
    title: str = "Internal Server Error"


class ConfigurationError(FreightScaleError, ValueError):
    """A setting is invalid; the message names the setting, the value and the fix."""


class MissingDependencyError(FreightScaleError, ImportError):
    """An optional dependency is not installed.

    Args:
        package: the distribution that is missing (``asyncpg``).
        extra: the freightscale extra that installs it (``postgres``).
        feature: what needed it, for the message.
    """

    def __init__(self, package: str, *, extra: str, feature: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'freightscale[{extra}]'"
        )


class StoreError(FreightScaleError):
    """A store operation failed (bad data, a server error, a lost connection)."""

    status_code = 503
    title = "Service Unavailable"


class StoreUnavailableError(StoreError):
    """The store's backend is unreachable or did not answer within its timeout."""


class AuthenticationError(FreightScaleError):
    """The request carries no valid credentials (HTTP 401)."""

    status_code = 401
    title = "Unauthorized"


class PermissionDenied(FreightScaleError):
    """The principal is authenticated but lacks a permission (HTTP 403)."""

    status_code = 403
    title = "Forbidden"


class RateLimitExceeded(FreightScaleError):
    """The request is over a rate limit (HTTP 429).

    Args:
        detail: human-readable explanation.
        retry_after: seconds until a retry can succeed.
    """

    status_code = 429
    title = "Too Many Requests"

    def __init__(self, detail: str = "Rate limit exceeded", *, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(detail)
