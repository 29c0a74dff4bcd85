"""SessionMiddleware through ASGI: cookies, lazy loading, writes, rotation, bad input."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from freightscale.context import scope_state
from freightscale.sessions import (
    CasResult,
    MemorySessionBackend,
    Session,
    SessionBackend,
    SessionMiddleware,
    SessionNotLoadedError,
    SessionRecord,
    load_session,
)
from freightscale.sessions.cookies import CookieSigner
from tests.sessions.apps import starlette_app
from tests.sessions.conftest import SECRET, settings

COOKIE_RE = re.compile(r"^fs_session=([A-Za-z0-9_-]{43})\.([A-Za-z0-9_-]{43});")


class CountingBackend:
    """Wraps a real backend and counts calls (the store itself is real)."""

    def __init__(self, inner: SessionBackend) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    async def load(self, session_id: str) -> SessionRecord | None:
        self.calls["load"] += 1
        return await self.inner.load(session_id)

    async def compare_and_set(
        self, session_id: str, data: dict[str, Any] | None, expires_at: float, *, version: int
    ) -> CasResult:
        self.calls["cas"] += 1
        return await self.inner.compare_and_set(session_id, data, expires_at, version=version)

    async def delete(self, session_id: str) -> None:
        self.calls["delete"] += 1
        await self.inner.delete(session_id)

    async def import_many(self, items: Sequence[tuple[str, dict[str, Any], float]]) -> list[bool]:
        return await self.inner.import_many(items)

    async def check(self) -> None:
        await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")


def session_cookie(response: httpx.Response) -> str | None:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith("fs_session="):
            return header
    return None


async def test_untouched_session_costs_no_store_call() -> None:
    backend = CountingBackend(MemorySessionBackend())
    app = SessionMiddleware(starlette_app(), settings(), backend=backend)
    async with client(app) as c:
        await c.get("/set?a=1")
        assert "fs_session" in c.cookies
        backend.calls.clear()
        for _ in range(5):
            response = await c.get("/plain")
            assert response.status_code == 200
            assert session_cookie(response) is None
    assert backend.calls == Counter()


async def test_write_creates_cookie_and_data_round_trips(app_backend: SessionBackend) -> None:
    app = SessionMiddleware(starlette_app(), settings(), backend=app_backend)
    async with client(app) as c:
        response = await c.get("/set?user=alice&role=admin")
        header = session_cookie(response)
        assert header is not None
        assert COOKIE_RE.match(header)
        assert "HttpOnly" in header
        assert "SameSite=Lax" in header
        assert "Max-Age=1209600" in header
        response = await c.get("/get")
        assert response.json()["data"] == {"user": "alice", "role": "admin"}
        # Reading without changes writes nothing back and sets no cookie.
        assert session_cookie(response) is None


async def test_anonymous_read_sets_no_cookie() -> None:
    backend = CountingBackend(MemorySessionBackend())
    app = SessionMiddleware(starlette_app(), settings(), backend=backend)
    async with client(app) as c:
        response = await c.get("/get")
    assert response.json() == {"data": {}, "id": None}
    assert session_cookie(response) is None
    assert backend.calls == Counter()  # no cookie: nothing to load


async def test_cookie_attributes_from_settings() -> None:
    s = settings(secure=True, same_site="strict", path="/app", domain="example.com", max_age=600)
    app = SessionMiddleware(starlette_app(), s, backend=MemorySessionBackend())
    async with client(app) as c:
        header = session_cookie(await c.get("/set?a=1"))
    assert header is not None
    for part in ("Max-Age=600", "Path=/app", "Domain=example.com", "Secure", "HttpOnly",
                 "SameSite=Strict"):  # fmt: skip
        assert part in header


async def test_unknown_id_is_never_adopted() -> None:
    backend = MemorySessionBackend()
    app = SessionMiddleware(starlette_app(), settings(), backend=backend)
    chosen = "A" * 43  # a client-chosen id, correctly signed (as if the key leaked)
    cookie = CookieSigner([SECRET]).sign(chosen)
    async with client(app) as c:
        response = await c.get("/set?x=1", headers={"cookie": f"fs_session={cookie}"})
    header = session_cookie(response)
    assert header is not None
    match = COOKIE_RE.match(header)
    assert match is not None
    assert match.group(1) != chosen
    assert await backend.load(chosen) is None
    assert (await backend.load(match.group(1))) is not None


@pytest.mark.parametrize(
    "raw",
    [
        b"fs_session=garbage",
        b"fs_session=" + b"A" * 43 + b"." + b"B" * 43,  # bad signature
        b"fs_session=" + b"A" * 43 + b"." + b"B" * 20,  # truncated
        b"fs_session=" + b"A" * 5000,  # oversized
        b"fs_session=\xff\xfe\xfa" + b"A" * 40,  # not UTF-8
        b"fs_session=",
        b"fs_session",
        b"; ;=;fs_session=a=b",
    ],
    ids=["garbage", "tampered", "truncated", "oversized", "non-utf8", "empty", "no-eq", "junk"],
)
async def test_bad_cookie_gives_anonymous_session(raw: bytes) -> None:
    backend = CountingBackend(MemorySessionBackend())
    app = SessionMiddleware(starlette_app(), settings(), backend=backend)
    async with client(app) as c:
        response = await c.get("/get", headers=[(b"cookie", raw)])
        assert response.status_code == 200
        assert response.json() == {"data": {}, "id": None}
        response = await c.get("/set?k=v", headers=[(b"cookie", raw)])
        assert response.status_code == 200
    assert backend.calls["load"] == 0  # rejected before any store call
    header = session_cookie(response)
    assert header is not None
    assert COOKIE_RE.match(header)


async def test_tampered_data_in_cookie_is_impossible() -> None:
    # The cookie holds only the id: there is no data to tamper with.
    app = SessionMiddleware(starlette_app(), settings(), backend=MemorySessionBackend())
    async with client(app) as c:
        header = session_cookie(await c.get("/set?user=alice"))
    assert header is not None
    assert "alice" not in header


async def test_key_rotation() -> None:
    old, new = (
        "old-secret-0123456789-abcdefghijklmnopqr",
        "new-secret-0123456789-abcdefghijklmnopqr",
    )
    backend = MemorySessionBackend()
    before = SessionMiddleware(starlette_app(), settings(secret_keys=[old]), backend=backend)
    async with client(before) as c:
        await c.get("/set?user=alice")
        cookie = c.cookies["fs_session"]
    after = SessionMiddleware(starlette_app(), settings(secret_keys=[new, old]), backend=backend)
    async with client(after) as c:
        c.cookies["fs_session"] = cookie
        assert (await c.get("/get")).json()["data"] == {"user": "alice"}
        header = session_cookie(await c.get("/set?more=1"))
    assert header is not None
    value = header.split(";")[0].split("=", 1)[1]
    assert CookieSigner([new]).unsign(value.encode()) is not None
    assert CookieSigner([old]).unsign(value.encode()) is None
    dropped = SessionMiddleware(starlette_app(), settings(secret_keys=[new]), backend=backend)
    async with client(dropped) as c:
        c.cookies["fs_session"] = cookie
        assert (await c.get("/get")).json()["data"] == {}


async def test_regenerate_moves_data_to_a_new_id(app_backend: SessionBackend) -> None:
    app = SessionMiddleware(starlette_app(), settings(), backend=app_backend)
    async with client(app) as c:
        await c.get("/set?cart=3")
        old_id = (await c.get("/get")).json()["id"]
        response = await c.get("/login?user=bob")
        header = session_cookie(response)
        assert header is not None
        match = COOKIE_RE.match(header)
        assert match is not None
        assert match.group(1) != old_id
        data = (await c.get("/get")).json()
    assert data["data"] == {"cart": "3", "user": "bob"}
    assert data["id"] == match.group(1)
    assert await app_backend.load(old_id) is None


async def test_clear_deletes_and_expires_cookie(app_backend: SessionBackend) -> None:
    app = SessionMiddleware(starlette_app(), settings(), backend=app_backend)
    async with client(app) as c:
        await c.get("/set?user=alice")
        sid = (await c.get("/get")).json()["id"]
        response = await c.get("/logout")
        header = session_cookie(response)
        assert header is not None
        assert "Max-Age=0" in header
        assert (await c.get("/get")).json()["data"] == {}
    assert await app_backend.load(sid) is None


async def test_sliding_expiry_refreshes_at_most_once_per_interval() -> None:
    now = [1_000_000.0]
    clock = lambda: now[0]  # noqa: E731
    backend = CountingBackend(MemorySessionBackend(clock=clock))
    s = settings(max_age=3600, refresh_interval=600)
    app = SessionMiddleware(starlette_app(), s, backend=backend, clock=clock)
    async with client(app) as c:
        await c.get("/set?a=1")
        backend.calls.clear()
        for _ in range(5):
            now[0] += 100  # 500 s in total: below the interval
            response = await c.get("/get")
            assert session_cookie(response) is None
        assert backend.calls["cas"] == 0
        now[0] += 200  # 700 s since the write
        response = await c.get("/get")
        assert session_cookie(response) is not None
        assert backend.calls["cas"] == 1
        sid = response.json()["id"]
        record = await backend.load(sid)
        assert record is not None
        assert record.expires_at == pytest.approx(now[0] + 3600)
        response = await c.get("/get")
        assert backend.calls["cas"] == 1
        # Without activity it expires.
        now[0] += 3601
        assert (await c.get("/get")).json()["data"] == {}


async def test_nested_mutation_is_saved() -> None:
    app = SessionMiddleware(starlette_app(), settings(), backend=MemorySessionBackend())
    async with client(app) as c:
        await c.get("/nested?item=a")
        await c.get("/nested?item=b")
        assert (await c.get("/get")).json()["data"] == {"cart": ["a", "b"]}


async def test_size_limit_is_a_clear_error_for_the_handler() -> None:
    app = SessionMiddleware(
        starlette_app(), settings(max_size_bytes=1024), backend=MemorySessionBackend()
    )
    async with client(app) as c:
        response = await c.get("/big?n=5000")
        assert response.status_code == 413
        assert "sessions.max_size_bytes=1024" in response.json()["error"]
        assert (await c.get("/big?n=100")).status_code == 200


async def test_non_json_value_is_refused() -> None:
    session = Session(loader=None, max_size=1024)
    with pytest.raises(TypeError, match="not JSON-serializable"):
        session["when"] = object()
    with pytest.raises(TypeError, match="not JSON-serializable"):
        session["nan"] = float("nan")
    assert dict(session) == {}


async def test_sync_access_before_load_is_a_clear_error() -> None:
    app = SessionMiddleware(starlette_app(), settings(), backend=MemorySessionBackend())
    async with client(app) as c:
        await c.get("/set?a=1")
        with pytest.raises(SessionNotLoadedError, match="load_session"):
            await c.get("/sync")


async def test_eager_paths_make_request_session_work() -> None:
    backend = CountingBackend(MemorySessionBackend())
    app = SessionMiddleware(starlette_app(), settings(eager_paths=["/account"]), backend=backend)
    async with client(app) as c:
        await c.get("/set?a=1")
        assert (await c.get("/account/sync")).json() == {"data": {"a": "1"}}
        backend.calls.clear()
        await c.get("/plain")
        assert backend.calls["load"] == 0


async def test_eager_mode_loads_everywhere() -> None:
    app = SessionMiddleware(starlette_app(), settings(eager=True), backend=MemorySessionBackend())
    async with client(app) as c:
        await c.get("/set?a=1")
        assert (await c.get("/sync")).json() == {"data": {"a": "1"}}


async def test_corrupt_entry_is_no_session_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = MemorySessionBackend()
    app = SessionMiddleware(starlette_app(), settings(), backend=backend)
    async with client(app) as c:
        await c.get("/set?a=1")
        sid = (await c.get("/get")).json()["id"]
        for raw in (b"not json", b'{"v":1,"e":9e99,"d":[1,2]}', b'["v"]'):
            backend._set_raw(sid, raw)
            with caplog.at_level(logging.WARNING, "freightscale.sessions"):
                for _ in range(3):
                    response = await c.get("/get")
                    assert response.status_code == 200
                    assert response.json()["data"] == {}
        # A write issues a fresh id rather than reusing the corrupt one.
        header = session_cookie(await c.get("/set?b=2"))
        assert header is not None
        assert sid not in header
    corrupt_logs = [r for r in caplog.records if "corrupt session" in r.getMessage()]
    assert len(corrupt_logs) == 1


async def test_session_id_is_in_the_request_context() -> None:
    seen: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope_state(scope).get("session_id"))
        session: Session = scope["session"]
        await session.load()
        session["n"] = 1
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = SessionMiddleware(inner, settings(), backend=MemorySessionBackend())
    async with client(app) as c:
        await c.get("/")
        cookie = c.cookies["fs_session"]
        await c.get("/")
    assert seen[0] is None
    assert seen[1] == cookie.split(".")[0]


async def test_bare_asgi_app() -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        session: Session = await scope["session"].load()
        session["hits"] = session.get("hits", 0) + 1
        body = str(session["hits"]).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    app = SessionMiddleware(inner, settings(), backend=MemorySessionBackend())
    async with client(app) as c:
        assert [(await c.get("/")).text for _ in range(3)] == ["1", "2", "3"]


async def test_fastapi_dependency() -> None:
    api = FastAPI()

    @api.get("/count")
    async def count(session: Session = Depends(load_session)) -> dict[str, int]:  # noqa: B008
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"]}

    app = SessionMiddleware(api, settings(), backend=MemorySessionBackend())
    async with client(app) as c:
        assert [(await c.get("/count")).json()["n"] for _ in range(3)] == [1, 2, 3]


async def test_lifespan_and_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        assert "session" not in scope

    app = SessionMiddleware(inner, settings(), backend=MemorySessionBackend())
    await app({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


async def test_concurrent_writes_of_one_session_are_merged(app_backend: SessionBackend) -> None:
    app = SessionMiddleware(starlette_app(), settings(), backend=app_backend)
    async with client(app) as c:
        await c.get("/set?base=1")
        first = c.get("/slow-set?key=a&value=1&wait=0.2")
        second = c.get("/slow-set?key=b&value=2&wait=0.3")
        responses = await asyncio.gather(first, second)
        assert all(r.status_code == 200 for r in responses)
        data = (await c.get("/get")).json()["data"]
    assert data == {"base": "1", "a": "1", "b": "2"}


async def test_write_after_concurrent_logout_does_not_resurrect(
    app_backend: SessionBackend,
) -> None:
    app = SessionMiddleware(starlette_app(), settings(), backend=app_backend)
    async with client(app) as c:
        await c.get("/set?user=alice")
        sid = (await c.get("/get")).json()["id"]
        slow = asyncio.create_task(c.get("/slow-set?key=cart&value=9&wait=0.3"))
        await asyncio.sleep(0.1)
        await c.get("/logout")
        response = await slow
        assert response.status_code == 200
    assert await app_backend.load(sid) is None


async def test_missing_secret_is_a_configuration_error() -> None:
    from freightscale.exceptions import ConfigurationError
    from freightscale.settings import SessionSettings

    with pytest.raises(ConfigurationError, match="FREIGHTSCALE_SESSIONS__SECRET_KEYS"):
        SessionMiddleware(starlette_app(), SessionSettings())
    with pytest.raises(ValueError, match="at least 32"):
        SessionSettings(secret_keys=["short"])  # type: ignore[list-item]


async def test_expired_session_is_gone_even_if_store_lags() -> None:
    now = [time.time()]
    backend = MemorySessionBackend(clock=lambda: now[0])
    app = SessionMiddleware(
        starlette_app(), settings(max_age=60), backend=backend, clock=lambda: now[0]
    )
    async with client(app) as c:
        await c.get("/set?a=1")
        now[0] += 61
        assert (await c.get("/get")).json()["data"] == {}


async def test_websocket_can_read_the_session() -> None:
    """Driven through raw ASGI messages (no websocket client needed)."""
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    async def ws(websocket: WebSocket) -> None:
        session = await load_session(websocket)
        await websocket.accept()
        await websocket.send_json(dict(session))
        await websocket.close()

    inner = starlette_app()
    inner.router.routes.append(WebSocketRoute("/ws", ws))
    app = SessionMiddleware(inner, settings(), backend=MemorySessionBackend())
    async with client(app) as c:
        await c.get("/set?user=alice")
        cookie = f"fs_session={c.cookies['fs_session']}".encode()
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "root_path": "",
             "query_string": b"", "headers": [(b"cookie", cookie)], "scheme": "ws",
             "server": ("test", 80), "client": ("127.0.0.1", 1), "subprotocols": [],
             "asgi": {"version": "3.0"}}  # fmt: skip
    await app(scope, receive, send)  # type: ignore[arg-type]
    texts = [m.get("text") for m in sent if m["type"] == "websocket.send"]
    assert texts == ['{"user":"alice"}'] or texts == ['{"user": "alice"}']


async def test_nested_growth_past_the_limit_is_refused_with_problem_json() -> None:
    backend = MemorySessionBackend()
    app = SessionMiddleware(starlette_app(), settings(max_size_bytes=1024), backend=backend)
    async with client(app) as c:
        await c.get("/nested?item=a")
        response = await c.get("/nested?item=" + "x" * 2000)
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/problem+json"
        assert "sessions.max_size_bytes=1024" in response.json()["detail"]
        # The stored session is unchanged.
        assert (await c.get("/get")).json()["data"] == {"cart": ["a"]}


async def test_a_request_leaves_no_reference_cycle_behind() -> None:
    app = SessionMiddleware(starlette_app(), settings(), backend=MemorySessionBackend())
    async with client(app) as c:
        cookie = session_cookie(await c.get("/set?a=1"))
    assert cookie is not None
    headers = [(b"host", b"test"), (b"cookie", cookie.split(";", 1)[0].encode())]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                     "method": "GET", "scheme": "http", "path": "/get", "raw_path": b"/get",
                     "root_path": "", "query_string": b"", "headers": headers,
                     "server": ("test", 80), "client": ("127.0.0.1", 1)}  # fmt: skip
            await app(scope, receive, send)
        gc.collect()
        leftovers = [o for o in gc.garbage if isinstance(o, Session)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200] * 20
    # Freed by reference counting as each request ended, not left for the collector.
    assert leftovers == []
