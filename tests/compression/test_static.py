from __future__ import annotations

import gzip
from pathlib import Path

import brotli
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from freightscale.compression import PrecompressedStaticFiles

JS = b"console.log('freight');\n" * 200


@pytest.fixture
def client(tmp_path: Path) -> httpx.AsyncClient:
    (tmp_path / "app.3f2a9c1d.js").write_bytes(JS)
    (tmp_path / "app.3f2a9c1d.js.br").write_bytes(brotli.compress(JS))
    (tmp_path / "app.3f2a9c1d.js.gz").write_bytes(gzip.compress(JS))
    (tmp_path / "plain.css").write_bytes(b"body{}" * 100)
    app = Starlette(routes=[Mount("/s", PrecompressedStaticFiles(directory=str(tmp_path)))])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t")


async def _raw(c: httpx.AsyncClient, path: str, **headers: str) -> tuple[httpx.Response, bytes]:
    resp = await c.send(c.build_request("GET", path, headers=headers), stream=True)
    raw = b"".join([chunk async for chunk in resp.aiter_raw()])
    return resp, raw


@pytest.mark.parametrize(("accept", "encoding"), [("br, gzip", "br"), ("gzip", "gzip")])
async def test_serves_sibling(client: httpx.AsyncClient, accept: str, encoding: str) -> None:
    resp, raw = await _raw(client, "/s/app.3f2a9c1d.js", **{"accept-encoding": accept})
    assert resp.status_code == 200
    assert resp.headers["content-encoding"] == encoding
    assert resp.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert resp.headers["vary"] == "Accept-Encoding"
    assert resp.headers["cache-control"] == "public, max-age=31536000, immutable"
    decoded = brotli.decompress(raw) if encoding == "br" else gzip.decompress(raw)
    assert decoded == JS
    assert int(resp.headers["content-length"]) == len(raw)


async def test_refused_and_ranged_get_the_original(client: httpx.AsyncClient) -> None:
    resp, raw = await _raw(client, "/s/app.3f2a9c1d.js", **{"accept-encoding": "br;q=0, gzip;q=0"})
    assert "content-encoding" not in resp.headers
    assert raw == JS
    resp, raw = await _raw(
        client, "/s/app.3f2a9c1d.js", **{"accept-encoding": "br", "range": "bytes=0-9"}
    )
    assert "content-encoding" not in resp.headers
    assert resp.status_code == 206
    assert raw == JS[:10]


async def test_unfingerprinted_and_conditional(client: httpx.AsyncClient) -> None:
    resp, _ = await _raw(client, "/s/plain.css", **{"accept-encoding": "br"})
    assert "content-encoding" not in resp.headers
    assert resp.headers["cache-control"] == "no-cache"
    first, _ = await _raw(client, "/s/app.3f2a9c1d.js", **{"accept-encoding": "br"})
    again, raw = await _raw(
        client,
        "/s/app.3f2a9c1d.js",
        **{"accept-encoding": "br", "if-none-match": first.headers["etag"]},
    )
    assert again.status_code == 304
    assert raw == b""
    plain, _ = await _raw(client, "/s/app.3f2a9c1d.js", **{"accept-encoding": "identity"})
    assert plain.headers["etag"] != first.headers["etag"]  # one validator per representation
