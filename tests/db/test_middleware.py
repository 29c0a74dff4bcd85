"""Request-scoped sessions: commit, rollback, close, cancellation, 503s (real PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from freightscale.db import Database, DatabaseSessionMiddleware, get_session
from freightscale.errors import ErrorMiddleware
from tests.db.conftest import fetchval


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(scope="module")
def table(database_url: str) -> str:
    """A table of this module in the session's database."""

    async def create() -> None:
        await fetchval(
            plain(database_url),
            "CREATE TABLE IF NOT EXISTS mw_items (id serial PRIMARY KEY, name text NOT NULL, "
            "code text UNIQUE DEFERRABLE INITIALLY DEFERRED)",
        )

    anyio.run(create)
    return "mw_items"


async def count(database_url: str, name: str) -> int:
    n = await fetchval(plain(database_url), "SELECT count(*) FROM mw_items WHERE name = $1", name)
    return int(n)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")


INSERT = text("INSERT INTO mw_items(name, code) VALUES (:name, :code)")


def starlette_app(db: Database) -> Any:
    async def ok(request: Request) -> PlainTextResponse:
        await get_session(request).execute(
            INSERT, {"name": request.query_params["name"], "code": None}
        )
        return PlainTextResponse("ok")

    async def fail(request: Request) -> PlainTextResponse:
        await get_session(request).execute(
            INSERT, {"name": request.query_params["name"], "code": None}
        )
        raise RuntimeError("handler bug")

    async def bad_request(request: Request) -> JSONResponse:
        await get_session(request).execute(
            INSERT, {"name": request.query_params["name"], "code": None}
        )
        return JSONResponse({"detail": "invalid"}, status_code=400)

    async def dup_code(request: Request) -> PlainTextResponse:
        # Deferred unique constraint: fails only at COMMIT, i.e. after the handler.
        session = get_session(request)
        for _ in range(2):
            await session.execute(INSERT, {"name": request.query_params["name"], "code": "dup"})
        return PlainTextResponse("should not be seen")

    async def sleep(request: Request) -> PlainTextResponse:
        await get_session(request).execute(
            text("SELECT pg_sleep(:s)"), {"s": float(request.query_params["s"])}
        )
        return PlainTextResponse("slept")

    app = Starlette(
        routes=[
            Route("/ok", ok, methods=["POST"]),
            Route("/fail", fail, methods=["POST"]),
            Route("/bad", bad_request, methods=["POST"]),
            Route("/dup", dup_code, methods=["POST"]),
            Route("/sleep", sleep),
        ]
    )
    return DatabaseSessionMiddleware(app, database=db)


def checked_out(db: Database) -> int:
    return int(db.engines.primary.pool.checkedout())  # type: ignore[attr-defined]


async def test_commit_on_success_rollback_on_error(
    database_url: str, table: str, make_database: Callable[..., Database]
) -> None:
    db = make_database(url=database_url, pool_size=2, max_overflow=0)
    app = starlette_app(db)
    async with client(app) as http:
        assert (await http.post("/ok", params={"name": "committed"})).status_code == 200
        with pytest.raises(RuntimeError, match="handler bug"):
            await http.post("/fail", params={"name": "raised"})
        assert (await http.post("/bad", params={"name": "rejected"})).status_code == 400
    assert await count(database_url, "committed") == 1
    assert await count(database_url, "raised") == 0
    assert await count(database_url, "rejected") == 0
    assert checked_out(db) == 0


async def test_commit_failure_is_never_reported_as_success(
    database_url: str, table: str, make_database: Callable[..., Database]
) -> None:
    db = make_database(url=database_url)
    app = ErrorMiddleware(starlette_app(db))
    async with client(app) as http:
        r = await http.post("/dup", params={"name": "deferred"})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert "should not be seen" not in r.text
    assert await count(database_url, "deferred") == 0
    assert checked_out(db) == 0


async def test_cancelled_requests_leak_no_connection(
    database_url: str, table: str, make_database: Callable[..., Database], app_name: str
) -> None:
    db = make_database(url=database_url, pool_size=3, max_overflow=2, application_name=app_name)
    app = starlette_app(db)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "GET", "path": "/sleep", "raw_path": b"/sleep",
        "query_string": b"s=2", "headers": [], "scheme": "http", "server": ("test", 80),
        "client": ("1.2.3.4", 1), "root_path": "", "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }  # fmt: skip
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(app, dict(scope), receive, send)
            # Wait until all five queries run on the server, then cancel them all.
            while (
                await fetchval(
                    plain(database_url),
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                    "AND state = 'active'",
                    app_name,
                )
                < 5
            ):
                await anyio.sleep(0.05)
            assert checked_out(db) == 5
            tg.cancel_scope.cancel()
    assert sent == []
    assert checked_out(db) == 0
    # The server is not left running the abandoned queries either.
    with anyio.fail_after(10):
        while await fetchval(
            plain(database_url),
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
            "AND state = 'active'",
            app_name,
        ):
            await anyio.sleep(0.1)
    # The pool still works.
    async with client(app) as http:
        assert (await http.get("/sleep", params={"s": 0})).status_code == 200
    assert checked_out(db) == 0


async def test_client_disconnect_mid_stream_closes_the_session(
    database_url: str, table: str, make_database: Callable[..., Database]
) -> None:
    db = make_database(url=database_url, pool_size=2, max_overflow=0)

    async def stream(request: Request) -> StreamingResponse:
        session = get_session(request)

        async def rows() -> Any:
            for i in range(1000):
                value = await session.scalar(text("SELECT CAST(:i AS int)"), {"i": i})
                yield f"{value}\n".encode()
                await anyio.sleep(0.01)

        return StreamingResponse(rows())

    app = DatabaseSessionMiddleware(Starlette(routes=[Route("/stream", stream)]), database=db)
    disconnect = anyio.Event()
    chunks: list[bytes] = []
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if len(chunks) >= 3:
                disconnect.set()

    scope = {
        "type": "http", "method": "GET", "path": "/stream", "raw_path": b"/stream",
        "query_string": b"", "headers": [], "scheme": "http", "server": ("test", 80),
        "client": ("1.2.3.4", 1), "root_path": "", "http_version": "1.1",
        "asgi": {"version": "3.0", "spec_version": "2.0"},
    }  # fmt: skip
    with anyio.fail_after(10):
        await app(scope, receive, send)
    assert 3 <= len(chunks) < 1000
    assert checked_out(db) == 0


async def test_pool_timeout_is_a_503_problem(
    database_url: str, table: str, make_database: Callable[..., Database]
) -> None:
    db = make_database(
        url=database_url, pool_size=1, max_overflow=0, pool_timeout=0.2, unavailable_retry_after=3
    )
    app = starlette_app(db)
    results: dict[str, httpx.Response] = {}
    async with client(app) as http:

        async def slow() -> None:
            results["slow"] = await http.get("/sleep", params={"s": 1})

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            with anyio.fail_after(5):
                while checked_out(db) < 1:
                    await anyio.sleep(0.01)
            results["fast"] = await http.get("/sleep", params={"s": 0})
    assert results["slow"].status_code == 200
    fast = results["fast"]
    assert fast.status_code == 503
    assert fast.headers["content-type"] == "application/problem+json"
    assert fast.headers["retry-after"] == "3"
    body = json.loads(fast.text)
    assert body["status"] == 503
    assert body["reason"] == "pool_timeout"
    assert "Traceback" not in fast.text
    assert checked_out(db) == 0


async def test_works_under_a_bare_asgi_app(
    database_url: str, table: str, make_database: Callable[..., Database]
) -> None:
    db = make_database(url=database_url)

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        session = get_session(scope)
        await session.execute(INSERT, {"name": "bare", "code": None})
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"made"})

    async with client(DatabaseSessionMiddleware(bare, database=db)) as http:
        r = await http.get("/")
    assert r.status_code == 201
    assert await count(database_url, "bare") == 1


async def test_passes_lifespan_through_and_requires_the_middleware(
    database_url: str, make_database: Callable[..., Database]
) -> None:
    db = make_database(url=database_url)
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        assert "db_session" not in scope.get("freightscale", {})

    app = DatabaseSessionMiddleware(inner, database=db)
    await app({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]
    with pytest.raises(RuntimeError, match="DatabaseSessionMiddleware"):
        get_session({"type": "http"})


async def test_a_non_database_500_is_passed_on_unchanged(
    database_url: str, table: str, make_database: Callable[..., Database]
) -> None:
    db = make_database(url=database_url)
    app = starlette_app(db)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        r = await http.post("/fail", params={"name": "plain-500"})
    # Starlette's own 500 page: held back while we looked at the exception, then sent.
    assert r.status_code == 500
    assert r.text == "Internal Server Error"
    assert await count(database_url, "plain-500") == 0


async def test_a_request_that_never_asks_creates_no_session(
    database_url: str, table: str, make_database: Callable[..., Database]
) -> None:
    db = make_database(url=database_url)
    made: list[object] = []
    real = db.session

    def counting(state: Any = None) -> Any:
        made.append(state)
        return real(state)

    db.session = counting  # type: ignore[method-assign]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/db":
            await get_session(scope).execute(INSERT, {"name": "lazy", "code": None})
            assert get_session(scope) is get_session(scope)  # one per request
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with client(DatabaseSessionMiddleware(app, database=db)) as http:
        for _ in range(3):
            assert (await http.get("/static")).status_code == 200
        assert made == []  # no session object, no cleanup work
        assert (await http.post("/db")).status_code == 200
    assert len(made) == 1
    assert await count(database_url, "lazy") == 1
    assert checked_out(db) == 0
