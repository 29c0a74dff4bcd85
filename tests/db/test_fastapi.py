"""The FastAPI dependency and the 503 exception handlers."""

from collections.abc import Callable
from typing import Annotated, Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import text

from freightscale.db import Database, DatabaseSessionMiddleware, RoutingAsyncSession
from freightscale.db.fastapi import add_exception_handlers, session_dependency
from tests.db.conftest import fetchval


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(scope="module")
def table(database_url: str) -> None:
    async def create() -> None:
        await fetchval(
            plain(database_url),
            "CREATE TABLE IF NOT EXISTS fa_items (id serial PRIMARY KEY, name text NOT NULL)",
        )

    anyio.run(create)


def make_app(db: Database) -> FastAPI:
    app = FastAPI()
    add_exception_handlers(app)
    Session = Annotated[RoutingAsyncSession, Depends(session_dependency(db), scope="function")]

    @app.post("/items/{name}", status_code=201)
    async def create(name: str, session: Session) -> dict[str, Any]:
        await session.execute(text("INSERT INTO fa_items(name) VALUES (:n)"), {"n": name})
        if name.startswith("reject"):
            raise HTTPException(status_code=409, detail="conflict")
        return {"name": name, "session": id(session)}

    @app.get("/sleep/{seconds}")
    async def sleep(seconds: float, session: Session) -> dict[str, str]:
        await session.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
        return {"ok": "yes"}

    return app


async def names(database_url: str, name: str) -> int:
    return int(
        await fetchval(plain(database_url), "SELECT count(*) FROM fa_items WHERE name = $1", name)
    )


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")


async def test_dependency_commits_rolls_back_and_closes(
    database_url: str, table: None, make_database: Callable[..., Database]
) -> None:
    db = make_database(url=database_url, pool_size=2, max_overflow=0)
    async with client(make_app(db)) as http:
        assert (await http.post("/items/fa-ok")).status_code == 201
        assert (await http.post("/items/reject-fa")).status_code == 409
    assert await names(database_url, "fa-ok") == 1
    assert await names(database_url, "reject-fa") == 0
    assert db.engines.primary.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_pool_timeout_is_a_503_under_fastapi(
    database_url: str, table: None, make_database: Callable[..., Database]
) -> None:
    db = make_database(url=database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    got: dict[str, httpx.Response] = {}
    async with client(make_app(db)) as http:

        async def slow() -> None:
            got["slow"] = await http.get("/sleep/1")

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            with anyio.fail_after(5):
                while db.engines.primary.pool.checkedout() < 1:  # type: ignore[attr-defined]
                    await anyio.sleep(0.01)
            got["fast"] = await http.get("/sleep/0")
    assert got["slow"].status_code == 200
    assert got["fast"].status_code == 503
    assert got["fast"].headers["content-type"] == "application/problem+json"
    assert got["fast"].headers["retry-after"] == "2"
    assert got["fast"].json()["reason"] == "pool_timeout"
    assert db.engines.primary.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_inside_the_middleware_the_dependency_reuses_its_session(
    database_url: str, table: None, make_database: Callable[..., Database]
) -> None:
    db = make_database(url=database_url)
    app = make_app(db)
    seen: list[int] = []

    @app.get("/same")
    async def same(
        a: Annotated[RoutingAsyncSession, Depends(session_dependency(db), scope="function")],
    ) -> dict[str, bool]:
        from freightscale.db import get_session

        seen.append(id(a))
        return {"same": a is get_session(app_scope.pop())}

    app_scope: list[Any] = []

    async def capture(scope: Any, receive: Any, send: Any) -> None:
        app_scope.append(scope)
        await app(scope, receive, send)

    async with client(DatabaseSessionMiddleware(capture, database=db)) as http:
        r = await http.get("/same")
        assert r.json() == {"same": True}
        assert (await http.post("/items/fa-mw")).status_code == 201
    assert await names(database_url, "fa-mw") == 1
