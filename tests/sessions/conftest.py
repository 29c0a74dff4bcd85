"""Fixtures: one session backend of every kind, over the real services."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from freightscale.sessions import MemorySessionBackend, SessionBackend
from freightscale.settings import SessionSettings

SECRET = "test-secret-key-0123456789-abcdefghijklmnop"


def settings(**overrides: object) -> SessionSettings:
    """SessionSettings for tests: plain HTTP cookies, the test secret."""
    values: dict[str, object] = {"secret_keys": [SECRET], "secure": False}
    values.update(overrides)
    return SessionSettings(**values)  # type: ignore[arg-type]


def make_backend(kind: str, request: pytest.FixtureRequest) -> SessionBackend:
    """Build a backend of ``kind``; call it from a *sync* fixture (the service
    fixtures run ``asyncio.run`` and cannot start inside a running loop)."""
    if kind == "memory":
        return MemorySessionBackend(max_entries=1000)
    if kind in ("redis", "redis-cluster"):
        from freightscale.backends.redis import create_redis_client
        from freightscale.sessions.redis import RedisSessionBackend

        url = request.getfixturevalue("redis_url" if kind == "redis" else "redis_cluster_url")
        prefix = request.getfixturevalue("redis_prefix")
        return RedisSessionBackend(create_redis_client(url), key_prefix=prefix, owns_client=True)
    if kind == "postgres":
        from freightscale.sessions.postgres import PostgresSessionBackend

        url = request.getfixturevalue("database_url")
        table = f"sessions_{uuid.uuid4().hex[:10]}"
        return PostgresSessionBackend.from_url(url, table_name=table, timeout=5.0)
    raise AssertionError(kind)


@pytest.fixture(params=["memory", "redis", "redis-cluster", "postgres"])
def _any_backend(request: pytest.FixtureRequest) -> SessionBackend:
    return make_backend(request.param, request)


@pytest.fixture
async def backend(_any_backend: SessionBackend) -> AsyncIterator[SessionBackend]:
    """A fresh session backend of each kind."""
    yield _any_backend
    await _any_backend.aclose()


@pytest.fixture(params=["memory", "redis", "postgres"])
def _app_backend(request: pytest.FixtureRequest) -> SessionBackend:
    return make_backend(request.param, request)


@pytest.fixture
async def app_backend(_app_backend: SessionBackend) -> AsyncIterator[SessionBackend]:
    """A backend of each kind for middleware-level tests (cluster covered by the contract)."""
    yield _app_backend
    await _app_backend.aclose()
