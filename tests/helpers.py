"""Test helpers: raw-ASGI drivers and a free port.

httpx refuses hostile header bytes and never sends lifespan events; the
drivers here call an ASGI app directly with hand-built scopes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from freightscale.telemetry import METRICS, get_counter
from freightscale.types import ASGIApp, Message
from tests.servers import free_port

__all__ = ["LifespanDriver", "free_port", "http_scope", "request", "websocket_session"]


def http_scope(
    path: str = "/", *, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    """Return a minimal HTTP scope."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers or [],
        "client": ("127.0.0.1", 12345),
        "server": ("testserver", 80),
    }


@dataclass
class Response:
    """What an app sent for one HTTP request."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """Return the first header ``name`` (case-insensitive), or None."""
        key = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == key:
                return v.decode("latin-1")
        return None


async def request(app: ASGIApp, scope: dict[str, Any]) -> Response:
    """Send one HTTP request with an empty body to ``app``; return the response."""
    response = Response()
    sent_body = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # pragma: no cover - nothing more to receive
        return {}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            response.body += message.get("body", b"")

    await app(scope, receive, send)
    return response


class LifespanDriver:
    """Plays the server's side of the lifespan protocol against an app."""

    def __init__(self, app: ASGIApp, *, state: dict[str, Any] | None = None) -> None:
        self.app = app
        self.scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}}
        if state is not None:
            self.scope["state"] = state
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _event(self, kind: str, timeout: float) -> Message:
        if self.task is None:
            self.task = asyncio.create_task(
                self.app(self.scope, self._to_app.get, self._from_app.put)
            )
        await self._to_app.put({"type": kind})
        async with asyncio.timeout(timeout):
            return await self._from_app.get()

    async def startup(self, timeout: float = 5.0) -> Message:
        """Send ``lifespan.startup``; return the app's answer."""
        return await self._event("lifespan.startup", timeout)

    async def shutdown(self, timeout: float = 5.0) -> Message:
        """Send ``lifespan.shutdown``; return the app's answer and wait for the app to end."""
        answer = await self._event("lifespan.shutdown", timeout)
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), timeout)
        return answer


async def websocket_session(
    app: ASGIApp, path: str, *, headers: list[tuple[bytes, bytes]] | None = None
) -> list[Message]:
    """Connect a websocket to ``app``, let the app talk, return what it sent.

    The client sends ``websocket.connect`` and then waits; once the app
    closes (or after it sent three messages), the client disconnects.
    """
    scope = http_scope(path, headers=headers)
    scope.update(type="websocket", scheme="ws", subprotocols=[])
    del scope["method"]
    sent: list[Message] = []
    closed = asyncio.Event()
    connected = False

    async def receive() -> Message:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        await closed.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "websocket.close" or len(sent) >= 3:
            closed.set()

    async with asyncio.timeout(5):
        await app(scope, receive, send)
    return sent


CounterKey = tuple[str, tuple[tuple[str, str], ...]]


def counter_totals() -> dict[CounterKey, int]:
    """Every freightscale counter series now: {(metric, sorted label items): total}."""
    totals: dict[CounterKey, int] = {}
    for spec in METRICS.values():
        if spec.kind == "counter":
            for labels, value in get_counter(spec.name).values().items():
                totals[(spec.name, tuple(sorted(labels)))] = value
    return totals


@contextmanager
def counted() -> Iterator[dict[CounterKey, int]]:
    """What the block added to freightscale's counters (series that did not move are absent).

    Counters are process-wide running totals, so tests compare before and after.
    """
    before = counter_totals()
    added: dict[CounterKey, int] = {}
    yield added
    for key, value in counter_totals().items():
        if value != before.get(key, 0):
            added[key] = value - before.get(key, 0)
