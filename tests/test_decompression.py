"""Request decompression: every encoding round-trips; bombs and junk get 4xx."""

from __future__ import annotations

import gzip
import resource
import zlib
from collections.abc import Iterator

import brotli
import httpx
import pytest
import zstandard
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.decompression import RequestDecompressionMiddleware
from freightscale.exceptions import ConfigurationError
from freightscale.settings.decompression import DecompressionSettings

PAYLOAD = b'{"shipments": [' + b",".join(b'{"id": %d}' % i for i in range(2000)) + b"]}"


def _encode(encoding: str, data: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    if encoding == "br":
        return brotli.compress(data)
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    raise AssertionError(encoding)


class Seen:
    def __init__(self) -> None:
        self.body_sizes: list[int] = []
        self.headers: list[dict[str, str]] = []


def make_app(seen: Seen, **settings: object) -> RequestDecompressionMiddleware:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        seen.body_sizes.append(len(body))
        seen.headers.append(dict(request.headers))
        return JSONResponse({"size": len(body), "crc": zlib.crc32(body)})

    app = Starlette(routes=[Route("/", echo, methods=["POST"])])
    return RequestDecompressionMiddleware(app, DecompressionSettings(**settings))  # type: ignore[arg-type]


def client(app: RequestDecompressionMiddleware) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
async def test_roundtrip(encoding: str) -> None:
    seen = Seen()
    async with client(make_app(seen)) as c:
        r = await c.post(
            "/", content=_encode(encoding, PAYLOAD), headers={"Content-Encoding": encoding}
        )
    assert r.status_code == 200
    assert r.json() == {"size": len(PAYLOAD), "crc": zlib.crc32(PAYLOAD)}
    assert "content-encoding" not in seen.headers[0]
    assert "content-length" not in seen.headers[0]


async def test_stacked_encodings_are_undone_last_first() -> None:
    seen = Seen()
    body = brotli.compress(gzip.compress(PAYLOAD))
    async with client(make_app(seen)) as c:
        r = await c.post("/", content=body, headers={"Content-Encoding": "gzip, br"})
    assert r.status_code == 200
    assert r.json()["size"] == len(PAYLOAD)


async def test_streamed_chunks_are_decoded_incrementally() -> None:
    seen = Seen()
    compressed = gzip.compress(PAYLOAD)

    async def chunks() -> Iterator[bytes]:  # type: ignore[misc]
        for i in range(0, len(compressed), 100):
            yield compressed[i : i + 100]

    async with client(make_app(seen)) as c:
        r = await c.post("/", content=chunks(), headers={"Content-Encoding": "gzip"})  # type: ignore[arg-type]
    assert r.status_code == 200
    assert r.json()["crc"] == zlib.crc32(PAYLOAD)


async def test_uncompressed_requests_pass_untouched() -> None:
    seen = Seen()
    async with client(make_app(seen)) as c:
        r = await c.post("/", content=PAYLOAD)
    assert r.json()["size"] == len(PAYLOAD)
    assert seen.headers[0]["content-length"] == str(len(PAYLOAD))


async def test_unknown_encoding_is_415() -> None:
    seen = Seen()
    async with client(make_app(seen)) as c:
        r = await c.post("/", content=b"xx", headers={"Content-Encoding": "lzma"})
    assert r.status_code == 415
    assert r.headers["content-type"] == "application/problem+json"
    assert "lzma" in r.json()["detail"]
    assert "gzip" in r.headers["accept-encoding"]
    assert seen.body_sizes == []


async def test_disabled_encoding_is_415() -> None:
    seen = Seen()
    async with client(make_app(seen, encodings=["gzip"])) as c:
        r = await c.post("/", content=_encode("br", PAYLOAD), headers={"Content-Encoding": "br"})
    assert r.status_code == 415


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
async def test_corrupt_and_truncated_bodies_are_400(encoding: str) -> None:
    seen = Seen()
    good = _encode(encoding, PAYLOAD)
    async with client(make_app(seen)) as c:
        truncated = await c.post(
            "/", content=good[: len(good) // 2], headers={"Content-Encoding": encoding}
        )
        junk = await c.post(
            "/", content=b"\x00garbage" * 20, headers={"Content-Encoding": encoding}
        )
    assert truncated.status_code == 400
    assert junk.status_code == 400
    assert junk.headers["content-type"] == "application/problem+json"


def _bomb(encoding: str, size: int) -> bytes:
    zeros = b"\0" * (1 << 20)
    if encoding == "gzip":
        comp = zlib.compressobj(9, zlib.DEFLATED, 31)
        return b"".join(comp.compress(zeros) for _ in range(size >> 20)) + comp.flush()
    if encoding == "br":
        br = brotli.Compressor(quality=5)
        return b"".join(br.process(zeros) for _ in range(size >> 20)) + br.finish()
    zc = zstandard.ZstdCompressor(level=3).compressobj()
    return b"".join(zc.compress(zeros) for _ in range(size >> 20)) + zc.flush()


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    # gzip tops out near 1000:1, so its bomb is 1 MiB -> 1 GiB; brotli and zstd
    # turn tens of kilobytes into a gigabyte.
    return {
        "gzip": _bomb("gzip", 1 << 30),
        "br": _bomb("br", 1 << 30),
        "zstd": _bomb("zstd", 1 << 30),
    }


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
async def test_bombs_are_refused_with_bounded_memory(
    encoding: str, bombs: dict[str, bytes]
) -> None:
    bomb = bombs[encoding]
    if encoding != "gzip":
        assert len(bomb) < 128 * 1024  # kilobytes that expand to gigabytes
    seen = Seen()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    async with client(make_app(seen, max_size=50 * 1024 * 1024, max_ratio=1e5)) as c:
        r = await c.post("/", content=bomb, headers={"Content-Encoding": encoding})
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.status_code == 413
    assert "expands beyond" in r.json()["detail"]
    assert seen.body_sizes == []  # the handler never got a body
    assert grown_mib < 400  # a full expansion would need 1-2 GiB


async def test_ratio_limit_catches_bombs_below_max_size(bombs: dict[str, bytes]) -> None:
    seen = Seen()
    async with client(make_app(seen, max_size=1024**3, max_ratio=100)) as c:
        r = await c.post("/", content=bombs["br"], headers={"Content-Encoding": "br"})
    assert r.status_code == 413
    assert "ratio" in r.json()["detail"]


async def test_small_repetitive_body_is_exempt_from_ratio() -> None:
    seen = Seen()
    body = b"a" * 500_000  # compresses > 1000:1, but is below ratio_floor
    async with client(make_app(seen, max_ratio=10)) as c:
        r = await c.post("/", content=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.json()["size"] == len(body)


def test_unknown_encoding_in_settings_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="ENCODINGS"):
        RequestDecompressionMiddleware(
            lambda s, r, se: None, DecompressionSettings(encodings=["lzw"])
        )  # type: ignore[arg-type]
