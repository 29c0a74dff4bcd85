from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import brotli
import httpx
import pytest
import zstandard
from fastapi import FastAPI
from starlette.responses import PlainTextResponse

from freightscale.compression import CACHE_FILL_KEY, CompressionMiddleware
from freightscale.settings.compression import CompressionSettings
from freightscale.types import Message, Receive, Scope, Send
from tests.compression.apps import BODY, app
from tests.servers import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


def decode(encoding: str, data: bytes) -> bytes:
    if encoding == "br":
        return brotli.decompress(data)
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


class Result:
    def __init__(self, messages: list[Message]) -> None:
        self.start = messages[0]
        self.chunks = [m.get("body", b"") for m in messages[1:]]
        self.status: int = self.start["status"]
        self.headers = {k.decode(): v.decode() for k, v in self.start["headers"]}
        self.body = b"".join(self.chunks)


async def call(
    asgi: Any, path: str, headers: dict[str, str] | None = None, *, method: str = "GET",
    scope_extra: dict[str, Any] | None = None,
) -> Result:  # fmt: skip
    scope: dict[str, Any] = {
        "type": "http", "method": method, "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
        "server": ("t", 80), "client": ("127.0.0.1", 1), "asgi": {"version": "3.0"},
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }  # fmt: skip
    scope.update(scope_extra or {})
    messages: list[Message] = []
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        messages.append(message)

    await asgi(scope, receive, send)
    return Result(messages)


@pytest.mark.parametrize("encoding", ["br", "gzip", "zstd"])
async def test_round_trip_every_encoding(encoding: str) -> None:
    r = await call(app, "/data", {"accept-encoding": encoding})
    assert r.headers["content-encoding"] == encoding
    assert int(r.headers["content-length"]) == len(r.body) < len(BODY) // 3
    assert json.loads(decode(encoding, r.body)) == json.loads(BODY)
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.headers["etag"] == 'W/"v1"'  # weakened: the bytes changed
    assert "accept-ranges" not in r.headers


async def test_q_zero_refuses_and_identity_keeps_vary() -> None:
    r = await call(app, "/data", {"accept-encoding": "br;q=0, gzip;q=0"})
    assert "content-encoding" not in r.headers
    assert r.body == BODY
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.headers["etag"] == '"v1"'


async def test_no_header_is_identity() -> None:
    r = await call(app, "/data")
    assert "content-encoding" not in r.headers
    assert r.body == BODY


@pytest.mark.parametrize(
    ("path", "vary"), [("/small", True), ("/png", False), ("/encoded", False), ("/partial", True)]
)
async def test_not_compressed(path: str, vary: bool) -> None:
    r = await call(app, path, {"accept-encoding": "br, gzip"})
    assert r.headers.get("content-encoding") in (None, "gzip")  # /encoded keeps its own
    if path == "/encoded":
        assert r.body == b"x" * 5000  # never compressed twice
    assert ("vary" in r.headers) is vary
    assert int(r.headers["content-length"]) == len(r.body)


async def test_range_request_passes_through() -> None:
    r = await call(app, "/data", {"accept-encoding": "br", "range": "bytes=0-10"})
    assert "content-encoding" not in r.headers
    assert r.body == BODY


async def test_head_is_not_encoded() -> None:
    r = await call(app, "/data", {"accept-encoding": "br"}, method="HEAD")
    assert "content-encoding" not in r.headers


@pytest.mark.parametrize("encoding", ["br", "gzip", "zstd"])
async def test_stream_is_flushed_chunk_by_chunk(encoding: str) -> None:
    r = await call(app, "/stream", {"accept-encoding": encoding})
    assert r.headers["content-encoding"] == encoding
    assert "content-length" not in r.headers
    # Every chunk that carried data decodes on its own prefix: nothing waited
    # in the compressor for the end of the stream.
    if encoding == "gzip":
        first = zlib.decompressobj(31).decompress(r.chunks[0])
    elif encoding == "br":
        first = brotli.Decompressor().process(r.chunks[0])
    else:
        first = zstandard.ZstdDecompressor().decompressobj().decompress(r.chunks[0])
    assert first == b"chunk 0 " * 100
    assert decode(encoding, r.body) == b"".join(f"chunk {i} ".encode() * 100 for i in range(3))


async def test_cached_levels_apply_when_the_cache_fills() -> None:
    cfg = CompressionSettings(brotli_quality=0, cached_brotli_quality=11, minimum_size=0)
    mw = CompressionMiddleware(app.app, cfg)
    fast = await call(mw, "/data", {"accept-encoding": "br"})
    state: dict[str, Any] = {"freightscale": {CACHE_FILL_KEY: True}}
    dense = await call(mw, "/data", {"accept-encoding": "br"}, scope_extra=state)
    assert decode("br", dense.body) == decode("br", fast.body) == BODY
    assert len(dense.body) < len(fast.body)


async def test_fastapi_and_bare_asgi() -> None:
    api = FastAPI()

    @api.get("/x")
    async def x() -> PlainTextResponse:
        return PlainTextResponse("hello " * 200)

    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"hello " * 200})

    for asgi in (api, bare):
        mw = CompressionMiddleware(asgi)  # type: ignore[arg-type]
        r = await call(mw, "/x", {"accept-encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip"
        assert gzip.decompress(r.body) == b"hello " * 200
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(mw), base_url="http://t"
        ) as c:  # httpx decodes gzip itself
            assert (await c.get("/x")).text == "hello " * 200


async def test_lifespan_passes_through() -> None:
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    await CompressionMiddleware(inner)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.compression.apps:app", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env={"PYTHONPATH": f"{ROOT}/src:{ROOT}", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    try:
        wait_port(port, 20)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_event_stream_events_arrive_one_by_one(server: int, encoding: str) -> None:
    """Over a real uvicorn: each event is decodable before the next is produced."""
    url = f"http://127.0.0.1:{server}/events"
    with (
        httpx.Client(timeout=10) as c,
        c.stream("GET", url, headers={"accept-encoding": encoding}) as resp,
    ):
        assert resp.headers["content-encoding"] == encoding
        arrivals: list[tuple[float, str]] = []
        buffer = ""
        for text in resp.iter_text():  # httpx decodes incrementally
            buffer += text
            while "\n\n" in buffer:
                event, buffer = buffer.split("\n\n", 1)
                arrivals.append((time.monotonic(), event))
    assert [e for _, e in arrivals] == [f"data: event {i}" for i in range(3)]
    # The generator sleeps 0.3 s between events: they must not arrive together.
    assert arrivals[1][0] - arrivals[0][0] > 0.2
    assert arrivals[2][0] - arrivals[1][0] > 0.2


async def test_every_vary_header_of_the_app_is_kept() -> None:
    # Several Vary headers: Accept-Encoding joins the first, the others stay
    # (a downstream cache must still vary on the cookie and the language).
    async def varied(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"vary", b"Cookie"),
            (b"vary", b"Accept-Language"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": BODY})

    result = await call(CompressionMiddleware(varied), "/", {"accept-encoding": "br"})
    assert result.headers.get("content-encoding") == "br"
    varies = [v.decode() for k, v in result.start["headers"] if k == b"vary"]
    tokens = {t.strip().lower() for v in varies for t in v.split(",")}
    assert tokens == {"cookie", "accept-language", "accept-encoding"}
    assert decode("br", result.body) == BODY
