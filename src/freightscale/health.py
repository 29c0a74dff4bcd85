"""Liveness and readiness endpoints, as one mountable ASGI app.

``GET /healthz`` (liveness) answers 200 while the process serves.
``GET /readyz`` (readiness) runs every registered check concurrently, each
bounded by its own timeout, and answers 200 (``pass`` / ``warn``) or 503
(``fail``, or draining) with an ``application/health+json`` body in the IETF
health-check draft format::

    {"status": "fail",
     "checks": {"redis:responseTime": [{"status": "fail", "observedValue": 2000.4,
                                         "observedUnit": "ms", "time": "…",
                                         "output": "timed out after 2.0s"}]}}

A check is any ``async`` callable: it passes when it returns, fails when it
raises (or returns ``False``) or overruns its timeout, and warns when it
raises :class:`CheckWarning`. :func:`store_check`, :func:`redis_check` and
:func:`engine_check` build the usual ones.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from freightscale.settings.health import HealthSettings
from freightscale.telemetry.instruments import get_histogram
from freightscale.types import Receive, Scope, Send

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from freightscale.stores.base import Store

__all__ = [
    "HEALTH_CONTENT_TYPE",
    "CheckFunction",
    "CheckWarning",
    "HealthApp",
    "engine_check",
    "redis_check",
    "store_check",
]

HEALTH_CONTENT_TYPE = "application/health+json"

CheckFunction = Callable[[], Awaitable[object]]
"""A readiness check: passes when it returns, fails when it raises or returns False."""

Status = Literal["pass", "warn", "fail"]

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_RANK: dict[Status, int] = {"pass": 0, "warn": 1, "fail": 2}
_OUTPUT_LIMIT = 300


class CheckWarning(Exception):
    """Raise from a check to report ``warn``: degraded, but still ready."""


@dataclass(frozen=True, slots=True)
class _Check:
    name: str
    function: CheckFunction
    timeout: float


@dataclass(frozen=True, slots=True)
class _Report:
    status_code: int
    body: bytes


class HealthApp:
    """Mountable ASGI app serving liveness and readiness.

    Paths are matched relative to the mount point (``root_path``), so the app
    works both at the top level and under ``Mount("/ops", health)``.

    Args:
        settings: the health section (paths, default timeout, cache, output).
        checks: initial checks by name (same as calling :meth:`register`).
    """

    def __init__(
        self,
        settings: HealthSettings | None = None,
        *,
        checks: Mapping[str, CheckFunction] | None = None,
    ) -> None:
        self.settings = settings = settings or HealthSettings()
        self._paths = {settings.liveness_path: "live", settings.readiness_path: "ready"}
        self._checks: dict[str, _Check] = {}
        self._draining = False
        self._cached: tuple[float, _Report] | None = None
        self._inflight: asyncio.Task[_Report] | None = None
        self._duration = get_histogram("freightscale.health.check.duration")
        for name, function in (checks or {}).items():
            self.register(name, function)

    @property
    def paths(self) -> frozenset[str]:
        """The liveness and readiness paths this app answers."""
        return frozenset(self._paths)

    @property
    def check_names(self) -> tuple[str, ...]:
        """Names of the registered checks, in registration order."""
        return tuple(self._checks)

    def register(self, name: str, check: CheckFunction, *, timeout: float | None = None) -> None:
        """Add a readiness check.

        Args:
            name: short name shown in the body as ``<name>:responseTime``
                (letters, digits, ``_.-``; at most 64).
            check: the async callable to run on each readiness probe.
            timeout: seconds it may take; defaults to ``settings.check_timeout``.

        Raises:
            ValueError: for a malformed or duplicate name, or a non-positive timeout.
        """
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"health check name {name!r} must be 1-64 characters of letters, digits, '_.-'"
            )
        if name in self._checks:
            raise ValueError(f"a health check named {name!r} is already registered")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"health check {name!r}: timeout must be > 0, got {timeout!r}")
        self._checks[name] = _Check(name, check, timeout or self.settings.check_timeout)
        self._cached = None

    def unregister(self, name: str) -> None:
        """Remove the check ``name`` (no error if absent)."""
        self._checks.pop(name, None)
        self._cached = None

    @property
    def draining(self) -> bool:
        """True while readiness reports 503 so load balancers stop sending traffic."""
        return self._draining

    def set_draining(self, draining: bool = True) -> None:
        """Start (or stop) draining: readiness answers 503, liveness stays 200."""
        self._draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _ignore_lifespan(receive, send)
            return
        root = scope.get("root_path", "")
        path: str = scope["path"]
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        kind = self._paths.get(path)
        if kind is None:
            await _send(scope, send, 404, b'{"status":"fail","output":"not found"}')
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send(scope, send, 405, b'{"status":"fail","output":"method not allowed"}')
            return
        if kind == "live":
            await _send(scope, send, 200, b'{"status":"pass"}')
            return
        if self._draining:
            await _send(scope, send, 503, b'{"status":"fail","output":"draining"}')
            return
        report = await self.readiness()
        await _send(scope, send, report.status_code, report.body)

    async def readiness(self) -> _Report:
        """Run the checks (or reuse a result younger than ``cache_ttl``).

        Concurrent probes share one run, and a probe that disconnects does
        not cancel the run the others wait for.
        """
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < self.settings.cache_ttl:
            return cached[1]
        loop = asyncio.get_running_loop()
        task = self._inflight
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(self._run_all())
            self._inflight = task
        report = await asyncio.shield(task)
        if self._inflight is task:
            self._inflight = None
            self._cached = (time.monotonic(), report)
        return report

    async def _run_all(self) -> _Report:
        checks = list(self._checks.values())
        results = await asyncio.gather(*(self._run_one(check) for check in checks))
        overall: Status = "pass"
        body: dict[str, Any] = {"status": "pass", "checks": {}}
        for check, (status, entry) in zip(checks, results, strict=True):
            body["checks"][f"{check.name}:responseTime"] = [entry]
            if _RANK[status] > _RANK[overall]:
                overall = status
        body["status"] = overall
        payload = json.dumps(body, separators=(",", ":")).encode()
        return _Report(503 if overall == "fail" else 200, payload)

    async def _run_one(self, check: _Check) -> tuple[Status, dict[str, Any]]:
        start = time.perf_counter()
        status: Status = "pass"
        output: str | None = None
        task: asyncio.Future[object]
        try:
            task = asyncio.ensure_future(check.function())
        except Exception as error:  # a check that fails before it even awaits
            task = asyncio.get_running_loop().create_future()
            task.set_exception(error)
        # asyncio.wait (not wait_for) returns at the deadline even if the
        # check swallows its cancellation; the abandoned task is reaped below.
        done, _ = await asyncio.wait((task,), timeout=check.timeout)
        if not done:
            task.cancel()
            task.add_done_callback(_reap)
            status, output = "fail", f"timed out after {check.timeout:g}s"
        elif task.cancelled():
            status, output = "fail", "cancelled"
        else:
            failure = task.exception()
            if isinstance(failure, CheckWarning):
                status, output = "warn", _describe(failure)
            elif failure is not None:
                status, output = "fail", _describe(failure)
            elif task.result() is False:
                status, output = "fail", "check returned False"
        elapsed = time.perf_counter() - start
        self._duration.record(elapsed, {"check": check.name, "status": status})
        entry: dict[str, Any] = {
            "status": status,
            "observedValue": round(elapsed * 1000, 3),
            "observedUnit": "ms",
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        if output is not None and self.settings.show_output:
            entry["output"] = output
        return status, entry


def _reap(task: asyncio.Future[object]) -> None:
    if not task.cancelled():
        task.exception()


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:_OUTPUT_LIMIT]


async def _send(scope: Scope, send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", HEALTH_CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


async def _ignore_lifespan(receive: Receive, send: Send) -> None:
    # Served on its own (not under build_stack), the app has nothing to open.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def store_check(store: Store) -> CheckFunction:
    """Return a check that passes while ``store.check()`` does."""

    async def check() -> None:
        await store.check()

    return check


class _Pingable(Protocol):
    def ping(self) -> Any: ...


def redis_check(client: _Pingable) -> CheckFunction:
    """Return a check that PINGs a ``redis.asyncio`` (or cluster) client."""

    async def check() -> None:
        await client.ping()

    return check


def engine_check(engine: AsyncEngine) -> CheckFunction:
    """Return a check that runs ``SELECT 1`` on an SQLAlchemy ``AsyncEngine``."""

    async def check() -> None:
        from sqlalchemy import text

        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    return check
