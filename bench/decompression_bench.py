"""Request decompression cost, in-process through the ASGI interface.

Variants on a POST route that reads a ~20 KB JSON body and answers its size:
  bare         no middleware, uncompressed body (the baseline)
  passthrough  RequestDecompressionMiddleware, uncompressed body (its overhead)
  gzip / br / zstd   the middleware decoding a compressed body
Rounds are interleaved (A B C … A B C …); the median of each variant is
printed with its ratio to the baseline measured in the same run.

    python bench/decompression_bench.py [--requests 5000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import time
from typing import Any

import brotli
import zstandard
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from freightscale.decompression import RequestDecompressionMiddleware

BODY = json.dumps(
    [
        {"id": i, "status": "in_transit", "origin": "Rotterdam", "weight_kg": i * 3}
        for i in range(300)
    ]
).encode()


def app() -> Starlette:
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    return Starlette(routes=[Route("/", endpoint, methods=["POST"])])


async def drive(asgi: Any, body: bytes, encoding: str | None, requests: int) -> float:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if encoding:
        headers.append((b"content-encoding", encoding.encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/", "raw_path": b"/", "root_path": "", "query_string": b"",
        "headers": headers, "server": ("bench", 80), "client": ("127.0.0.1", 1),
    }  # fmt: skip
    answers: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            answers.append(message["body"])

    start = time.perf_counter()
    for _ in range(requests):
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await asyncio_app_call(asgi, dict(scope), receive, send)
    elapsed = time.perf_counter() - start
    assert answers[-1] == str(len(BODY)).encode(), answers[-1]
    return requests / elapsed


async def asyncio_app_call(asgi: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    await asgi(scope, receive, send)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    bare = app()
    wrapped = RequestDecompressionMiddleware(app())
    variants: dict[str, tuple[Any, bytes, str | None]] = {
        "bare": (bare, BODY, None),
        "passthrough": (wrapped, BODY, None),
        "gzip": (wrapped, gzip.compress(BODY, 6), "gzip"),
        "br": (wrapped, brotli.compress(BODY, quality=5), "br"),
        "zstd": (wrapped, zstandard.ZstdCompressor().compress(BODY), "zstd"),
    }
    print(f"$ python {' '.join(sys.argv)}")
    print(f"body {len(BODY)} bytes; {args.requests} requests/round, {args.rounds} rounds")
    for asgi, body, encoding in variants.values():
        await drive(asgi, body, encoding, 100)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (asgi, body, encoding) in variants.items():
            rates[name].append(await drive(asgi, body, encoding, args.requests))
    base = statistics.median(rates["bare"])
    for name, (_, body, _) in variants.items():
        median = statistics.median(rates[name])
        print(f"  {name:12s} {len(body):6d} B  {median:9.0f} req/s  x{median / base:5.2f} vs bare")


if __name__ == "__main__":
    asyncio.run(main())
