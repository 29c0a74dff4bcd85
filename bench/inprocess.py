"""Per-request CPU cost of each variant, in process (no server, no sockets).

Calls every variant's ASGI app directly with a canned GET request, interleaved
round after round, and prints CPU microseconds per request (median and best
round) and the difference to the baseline. Less noisy than wrk for small
overheads, but it measures only the app and middleware, not the server::

    python bench/inprocess.py                       # core variants
    python bench/inprocess.py --variants bare,stack-telemetry --requests 50000
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from bench.run import default_variants, discover  # noqa: E402


async def per_request_us(app: Any, path: str, requests: int) -> float:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1), "server": ("bench", 80),
    }  # fmt: skip
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: dict[str, Any]) -> None:
        return None

    # CPU time of this thread, not wall time: on a shared machine, time the
    # scheduler gives to other processes does not count against a variant.
    start = time.thread_time()
    for _ in range(requests):
        await app(dict(scope), receive, send)
    return (time.thread_time() - start) / requests * 1e6


async def run(args: argparse.Namespace) -> None:
    available = discover()
    names = args.variants.split(",") if args.variants else default_variants()
    apps = {}
    for name in names:
        module, attribute = available[name].target.split(":")
        apps[name] = (getattr(importlib.import_module(module), attribute), available[name].path)
    for app, path in apps.values():  # warm-up (and lazy resource opening)
        await per_request_us(app, path, 500)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(1, args.rounds + 1):
        line = []
        for name, (app, path) in apps.items():
            value = await per_request_us(app, path, args.requests)
            samples[name].append(value)
            line.append(f"{name} {value:.2f}")
        print(f"round {round_number}: " + " | ".join(line) + "  (us/request)")
    base = statistics.median(samples[names[0]])
    best_base = min(samples[names[0]])
    print(f"\n{args.rounds} rounds x {args.requests} requests; CPU us/request; vs {names[0]!r}")
    print(f"{'variant':22} {'median':>8} {'+us':>8} {'ratio':>7} {'best':>8} {'+us':>8}")
    for name in names:
        value, best = statistics.median(samples[name]), min(samples[name])
        print(
            f"{name:22} {value:8.2f} {value - base:8.2f} {value / base:7.3f} "
            f"{best:8.2f} {best - best_base:8.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", help="comma-separated names; the first is the baseline")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
