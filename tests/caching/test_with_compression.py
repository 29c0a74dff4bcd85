"""Cache outside compression: variants per normalized encoding, hits cost no compression."""

from __future__ import annotations

import gzip
import json
from typing import Any

import brotli
import httpx
import pytest

from freightscale.caching import ResponseCacheMiddleware
from freightscale.compression import CompressionMiddleware, encoders
from freightscale.settings.cache import CacheRule, CacheSettings
from freightscale.settings.compression import CompressionSettings
from freightscale.stores import Store

PAYLOAD = [{"id": i, "status": "in_transit", "origin": "Rotterdam"} for i in range(400)]


async def _raw(c: httpx.AsyncClient, accept: str) -> tuple[httpx.Response, bytes]:
    resp = await c.send(
        c.build_request("GET", "/data", headers={"accept-encoding": accept}), stream=True
    )
    return resp, b"".join([chunk async for chunk in resp.aiter_raw()])


async def test_variants_are_cached_per_encoding(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"handler": 0, "compress": 0}
    levels: list[tuple[str, int]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls["handler"] += 1
        body = json.dumps(PAYLOAD).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    real = encoders.compress

    def counting(encoding: str, body: bytes, level: int) -> bytes:
        calls["compress"] += 1
        levels.append((encoding, level))
        return real(encoding, body, level)

    monkeypatch.setattr("freightscale.compression.middleware.compress", counting)
    stack = ResponseCacheMiddleware(
        CompressionMiddleware(app, CompressionSettings(cached_brotli_quality=9)),
        CacheSettings(rules=(CacheRule(path="/data"),)),
        store=store,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(stack), base_url="http://t") as c:
        first, raw = await _raw(c, "gzip, deflate, br")
        assert first.headers["x-cache"] == "MISS"
        assert first.headers["content-encoding"] == "br"
        assert first.headers["etag"].startswith('"')  # strong again: hash of the stored bytes
        # Same preference, spelled differently: the same variant, from the cache.
        again, raw2 = await _raw(c, "br, gzip")
        assert again.headers["x-cache"] == "HIT"
        assert raw2 == raw
        assert json.loads(brotli.decompress(raw2)) == PAYLOAD
        gz, graw = await _raw(c, "gzip")
        assert gz.headers["x-cache"] == "MISS"
        assert json.loads(gzip.decompress(graw)) == PAYLOAD
        refused, iraw = await _raw(c, "br;q=0, gzip;q=0")
        assert refused.headers["x-cache"] == "MISS"
        assert "content-encoding" not in refused.headers
        assert json.loads(iraw) == PAYLOAD
        for accept in ("br", "gzip", "br;q=0, gzip;q=0"):
            assert (await _raw(c, accept))[0].headers["x-cache"] == "HIT"
    assert calls == {"handler": 3, "compress": 2}  # hits did no compression work
    assert levels == [("br", 9), ("gzip", 9)]  # the cached levels, paid once
    await stack.aclose()
