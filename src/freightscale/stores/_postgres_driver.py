"""Where the PostgreSQL store meets SQLAlchemy and asyncpg.

Builds the store's own engine from a URL, checks option ranges, and holds
:func:`_translate`, the one place a driver error becomes a freightscale
exception. Private to :mod:`freightscale.stores.postgres`.
"""

from __future__ import annotations

import importlib.util

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from freightscale.exceptions import (
    ConfigurationError,
    MissingDependencyError,
    StoreError,
    StoreUnavailableError,
)
from freightscale.telemetry import get_counter

_DRIVERS = ("postgresql", "postgres", "postgresql+asyncpg")
# SQLSTATE classes meaning "the server is unreachable, overloaded or going away":
# 08 connection exception, 53 insufficient resources, 57 operator intervention
# (57014 = statement timeout, 57P01 = admin shutdown), 58 system error.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")


def _translate(exc: BaseException, *, data_error: str | None = None) -> Exception:
    """Map a driver error to the freightscale exception to raise ``from`` it."""
    sqlstate: str | None = getattr(getattr(exc, "orig", exc), "sqlstate", None)
    if data_error is not None and sqlstate is not None and sqlstate.startswith("22"):
        return ValueError(data_error)
    unavailable = (
        isinstance(exc, OSError | TimeoutError | sa_exc.TimeoutError)
        or (sqlstate is not None and sqlstate.startswith(_UNAVAILABLE_CLASSES))
        or (isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated)
        or (sqlstate is None and isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError))
        or (sqlstate is None and type(exc).__module__.startswith("asyncpg"))
    )
    kind = "unavailable" if unavailable else "error"
    get_counter("freightscale.store.errors").add(1, {"store": "postgres", "operation": kind})
    if isinstance(exc, TimeoutError):
        message = "PostgreSQL did not answer in time"
    else:
        # Name the driver's error, never SQLAlchemy's text: it carries the
        # statement's parameters, i.e. the stored values.
        orig = getattr(exc, "orig", None) or exc
        name = type(orig.__cause__ or orig).__name__
        status = "is unavailable" if unavailable else "store error"
        message = f"PostgreSQL {status}: {name}: {orig}"[:300]
    return StoreUnavailableError(message) if unavailable else StoreError(message)


def _is_driver_error(exc: BaseException) -> bool:
    return isinstance(exc, sa_exc.SQLAlchemyError | OSError | TimeoutError) or type(
        exc
    ).__module__.startswith("asyncpg")


def _check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise ConfigurationError(f"PostgresStore {name}={value!r} must be between {low} and {high}")


def _create_engine(
    url: str,
    *,
    connect_timeout: float,
    statement_timeout: float | None,
    pool_size: int,
    max_overflow: int,
    pool_timeout: float,
    pool_pre_ping: bool,
) -> AsyncEngine:
    """Validate ``PostgresStore.from_url``'s arguments and build its engine (no I/O)."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise ConfigurationError(f"PostgresStore URL is not a valid URL: {exc}") from None
    if parsed.drivername not in _DRIVERS:
        raise ConfigurationError(
            f"PostgresStore URL scheme {parsed.drivername!r} is not one of {', '.join(_DRIVERS)}"
        )
    if importlib.util.find_spec("asyncpg") is None:
        raise MissingDependencyError("asyncpg", extra="postgres", feature="PostgresStore")
    _check_range("connect_timeout", connect_timeout, 0.01, 300)
    _check_range("statement_timeout", statement_timeout, 0.001, 3600)
    _check_range("pool_size", pool_size, 1, 1000)
    _check_range("max_overflow", max_overflow, 0, 1000)
    _check_range("pool_timeout", pool_timeout, 0.01, 300)
    server_settings = {"application_name": "freightscale-store"}
    if statement_timeout is not None:
        server_settings["statement_timeout"] = str(max(1, round(statement_timeout * 1000)))
    return create_async_engine(
        parsed.set(drivername="postgresql+asyncpg"),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_pre_ping=pool_pre_ping,
        pool_recycle=1800,
        connect_args={
            "timeout": connect_timeout,
            # Client-side guard for a server that stops answering altogether.
            "command_timeout": None if statement_timeout is None else statement_timeout + 1,
            "server_settings": server_settings,
        },
    )
