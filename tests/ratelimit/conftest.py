"""Helpers for the rate-limit tests: a tiny app, a principal binder, a client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from freightscale.context import Principal, bind_principal
from freightscale.ratelimit import RateLimitMiddleware
from freightscale.types import ASGIApp, Receive, Scope, Send


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """A bare ASGI app answering a small JSON body."""
    if scope["type"] == "lifespan":
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


def with_principal(app: ASGIApp) -> ASGIApp:
    """Stand-in for auth: ``x-user`` / ``x-tenant`` headers become the principal."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", ()))
        user = headers.get(b"x-user")
        principal = None
        if user is not None:
            tenant = headers.get(b"x-tenant")
            principal = Principal(user.decode(), tenant.decode() if tenant else None)
        with bind_principal(principal, scope):
            await app(scope, receive, send)

    return wrapper


def client_for(app: ASGIApp, ip: str = "203.0.113.7") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.fixture
async def make_limiter() -> AsyncIterator[Callable[..., RateLimitMiddleware]]:
    """Build RateLimitMiddleware instances that are closed after the test."""
    made: list[RateLimitMiddleware] = []

    def make(*args: Any, **kwargs: Any) -> RateLimitMiddleware:
        kwargs.setdefault("app", hello)
        app = kwargs.pop("app")
        mw = RateLimitMiddleware(app, *args, **kwargs)
        made.append(mw)
        return mw

    yield make
    for mw in made:
        await mw.aclose()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None (memory) or a Redis URL: the middleware tests run over both."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A unique ``key_prefix`` for the limiter (Redis keys cleaned up by ``redis_prefix``)."""
    value: str = request.getfixturevalue("redis_prefix")
    return value
