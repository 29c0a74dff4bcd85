"""Route dispatch cost: Starlette's Router vs freightscale's IndexedRouter.

500 routes; requests go to the LAST one (Starlette's worst case for a hit)
and to a path no route matches (404: every route tried). Each variant is
driven in-process through the ASGI interface (no network, so the figure is
dispatch cost, not server noise), interleaved A B A B over several rounds.
Prints requests/s per variant and the ratio to Starlette in the same run.

    python bench/routing_bench.py [--routes 500] [--requests 20000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from freightscale.routing import use_indexed_router


def build(n_routes: int, indexed: bool) -> Starlette:
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    routes = [
        Route(f"/api/v1/resource{i}/{{item_id:int}}/detail", endpoint, methods=["GET"])
        for i in range(n_routes)
    ]
    app = Starlette(routes=routes)
    if indexed:
        use_indexed_router(app)
    return app


async def drive(app: Any, path: str, requests: int) -> float:
    scope_base = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "root_path": "", "query_string": b"", "headers": [],
        "server": ("bench", 80), "client": ("127.0.0.1", 1),
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = time.perf_counter()
    for _ in range(requests):
        await app(dict(scope_base, path=path, raw_path=path.encode()), receive, send)
    elapsed = time.perf_counter() - start
    assert len(set(statuses)) == 1, set(statuses)
    return requests / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=500)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    apps = {"starlette": build(args.routes, False), "indexed": build(args.routes, True)}
    cases = {
        "last route": f"/api/v1/resource{args.routes - 1}/42/detail",
        "404": "/api/v2/unknown",
    }
    print(f"$ python {' '.join(sys.argv)}")
    print(f"{args.routes} routes, {args.requests} requests/round, {args.rounds} rounds (A B A B)")
    for case, path in cases.items():
        for app in apps.values():  # warm up (the indexed router's memo included)
            await drive(app, path, 200)
        rates: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(args.rounds):
            for name, app in apps.items():
                rates[name].append(await drive(app, path, args.requests))
        base = statistics.median(rates["starlette"])
        for name in apps:
            median = statistics.median(rates[name])
            ratio = median / base
            print(f"  {case:10s} {name:10s} {median:10.0f} req/s   x{ratio:5.2f} vs starlette")


if __name__ == "__main__":
    asyncio.run(main())
