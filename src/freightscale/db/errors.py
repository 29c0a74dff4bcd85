"""The one place database driver errors are classified.

A pool timeout, a refused or dropped connection, a server that is starting
up or shutting down, or "too many connections" all mean the same thing to a
client: the database is unavailable right now, try again shortly. They
become :class:`DatabaseUnavailableError` (a 503 with ``Retry-After``); every
other error keeps its type.
"""

from __future__ import annotations

import logging
import socket
import threading

from sqlalchemy import exc as sa_exc

from freightscale.db.metrics import DbMetrics
from freightscale.errors import ProblemResponse, problem_response
from freightscale.exceptions import StoreUnavailableError

__all__ = [
    "DatabaseUnavailableError",
    "OutageLog",
    "is_unavailable",
    "unavailable_response",
]

logger = logging.getLogger("freightscale.db")

# SQLSTATE classes / codes meaning "not now": connection exceptions (08),
# insufficient resources (53: too many connections, out of memory),
# operator intervention (57P01 admin shutdown, 57P02 crash shutdown,
# 57P03 cannot connect now), serialization or deadlock are NOT here: they
# are the application's to retry.
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57P01", "57P02", "57P03")


class DatabaseUnavailableError(StoreUnavailableError):
    """The database could not serve the request: pool timeout or outage (HTTP 503).

    Args:
        detail: what happened, without connection secrets.
        reason: ``pool_timeout`` or ``unavailable``.
        retry_after: seconds a client should wait before retrying.
    """

    title = "Service Unavailable"

    def __init__(self, detail: str, *, reason: str, retry_after: int = 2) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(detail)


def _sqlstate(error: BaseException) -> str | None:
    for candidate in (error, getattr(error, "orig", None), error.__cause__):
        if candidate is None:
            continue
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def is_unavailable(error: BaseException) -> str | None:
    """Classify ``error``: ``"pool_timeout"``, ``"unavailable"`` or None (a real bug).

    Args:
        error: any exception raised while using a database session.
    """
    if isinstance(error, DatabaseUnavailableError):
        return error.reason
    if isinstance(error, sa_exc.TimeoutError):
        return "pool_timeout"
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return "unavailable"
        code = _sqlstate(error)
        if code is not None:
            return "unavailable" if code.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES) else None
        # Driver-level connection failures carry no SQLSTATE.
        if isinstance(error, sa_exc.InterfaceError | sa_exc.OperationalError):
            return "unavailable"
        cause = error.orig.__cause__ if error.orig is not None else None
        if isinstance(cause, ConnectionError | TimeoutError | socket.gaierror):
            return "unavailable"
        return None
    if isinstance(error, sa_exc.ResourceClosedError):
        return None
    # A refused or timed-out *connect* reaches us unwrapped from the driver.
    if isinstance(error, ConnectionError | TimeoutError | socket.gaierror):
        return "unavailable"
    if type(error).__module__.startswith("asyncpg"):
        code = _sqlstate(error)
        if code is not None:
            return "unavailable" if code.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES) else None
        if "Connection" in type(error).__name__:
            return "unavailable"
    return None


def unavailable_response(
    reason: str, *, retry_after: int, instance: str | None = None
) -> ProblemResponse:
    """The 503 problem+json sent for a pool timeout or a database outage."""
    if reason == "pool_timeout":
        detail = "All database connections are busy; retry shortly."
    else:
        detail = "The database is unavailable; retry shortly."
    return problem_response(
        503,
        detail=detail,
        instance=instance,
        headers={"Retry-After": str(retry_after)},
        extra={"reason": reason},
    )


class OutageLog:
    """Logs an outage once when it starts and once when it ends.

    Per-request failures during an outage are counted in a metric, not logged,
    so a down database does not flood the logs.
    """

    def __init__(self, name: str, db_metrics: DbMetrics | None = None) -> None:
        self.name = name
        self.metrics = db_metrics if db_metrics is not None else DbMetrics.for_provider()
        self._down = False
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        """True between the first failure and the next success."""
        return self._down

    def failure(self, reason: str, error: BaseException) -> None:
        """Record a failed request; log only the first of an outage."""
        self.metrics.record_unavailable(self.name, reason)
        with self._lock:
            first, self._down = not self._down, True
        if first:
            logger.warning(
                "database %s unavailable (%s): %s: %s; answering 503 until it recovers",
                self.name,
                reason,
                type(error).__name__,
                _short(error),
            )

    def success(self) -> None:
        """Record a request that reached the database; log the recovery once."""
        if not self._down:
            return
        with self._lock:
            was, self._down = self._down, False
        if was:
            logger.warning("database %s recovered", self.name)


def _short(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return text[:200]
