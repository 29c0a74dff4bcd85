"""Per-request cost of a Redis-backed session read, vs the same app without sessions.

Five uvicorn processes (one worker each) serve the same small JSON route
(see ``bench/sessions_apps.py``): ``bare`` (no sessions), ``get`` (one bare
redis-py GET per request: the floor), ``get-fs`` (the same GET through
freightscale's bounded, retrying ``create_redis_client``), ``freightscale``
(SessionMiddleware + Redis, ``await load_session``) and ``starsessions`` (its
SessionMiddleware + RedisStore, ``await load_session``). Every session request carries a valid
cookie, so each one reads its session from Redis. wrk drives them in
interleaved rounds (the order rotates each round); each round's requests/s
is divided by the ``bare`` figure of the *same* round, and the median of
those ratios is reported. Nothing is pinned by default: Redis is a third
busy process, and on a two-core machine pinning the server and wrk to one
core each leaves it to steal from one of them, which charges the Redis
variants for the layout (``--pin`` puts the servers on core 0 and wrk on
core 1, as the other benchmarks do).

Second table (``--mode cpu`` or ``both``): the same five apps driven in
process through ASGI, sequentially, against the same Redis; it reports the
client-side CPU time per request (``time.process_time``), which a shared,
noisy machine disturbs far less than wall-clock throughput. It prints the
CPU each variant adds to the bare app, and that as a multiple of what one
bare redis-py GET adds (1.00x would be "a session read costs exactly one GET").

    python bench/sessions_bench.py [--mode both] [--rounds 5] [--duration 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("bare", "get", "get-fs", "freightscale", "starsessions")

sys.path[:0] = [str(ROOT)]
from bench.net import free_port, wait_port  # noqa: E402
from bench.wrk import WRK_CORE, Wrk, pin_server, require_wrk  # noqa: E402


def start(
    variant: str, redis_url: str, prefix: str, pin: bool
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(os.environ, BENCH_VARIANT=variant, BENCH_REDIS_URL=redis_url, BENCH_PREFIX=prefix)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench")])
    command = [sys.executable, "-m", "uvicorn", "sessions_apps:app", "--port", str(port),
               "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(pin_server(command) if pin else command, env=env, cwd=ROOT)
    wait_port(port)
    return process, port


def login(port: int) -> str:
    """Create a session; return the Cookie header value that carries it ("" for none)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10) as response:
        cookies = [h.split(";", 1)[0] for h in response.headers.get_all("set-cookie") or []]
    return "; ".join(cookies)


def check(port: int, cookie: str) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.loads(response.read())
    if body != {"ok": True, "user": 4711}:
        raise SystemExit(f"port {port}: the session was not read: {body}")


def wrk_load(port: int, cookie: str, args: argparse.Namespace) -> Wrk:
    """The wrk run against one variant's server, with its session cookie (if any)."""
    return Wrk(
        f"http://127.0.0.1:{port}/", connections=args.connections, duration=args.duration,
        headers={"Cookie": cookie} if cookie else {}, latency=True,
        core=WRK_CORE if args.pin else None,
    )  # fmt: skip


async def _asgi_get(app: Any, path: str, cookie: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"host", b"bench")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": headers, "server": ("bench", 80),
             "client": ("127.0.0.1", 1)}  # fmt: skip
    start: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)

    await app(scope, receive, send)
    if start.get("status") != 200:
        raise SystemExit(f"{path}: status {start.get('status')}")
    return list(start.get("headers", []))


async def _cpu_rounds(args: argparse.Namespace, prefix: str) -> dict[str, list[float]]:
    os.environ.update(BENCH_REDIS_URL=args.redis_url, BENCH_PREFIX=prefix)
    # This checkout's freightscale, not an installed one.
    sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]
    import sessions_apps

    apps = {v: sessions_apps.build(v) for v in VARIANTS}
    cookies = {}
    for variant, app in apps.items():
        headers = await _asgi_get(app, "/login", "")
        cookies[variant] = "; ".join(
            v.decode().split(";", 1)[0] for k, v in headers if k == b"set-cookie"
        )
        for _ in range(200):  # warm-up
            await _asgi_get(app, "/", cookies[variant])
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_ in range(args.rounds):
        order = VARIANTS[round_ % len(VARIANTS) :] + VARIANTS[: round_ % len(VARIANTS)]
        for variant in order:
            app, cookie = apps[variant], cookies[variant]
            begin = time.process_time()
            for _ in range(args.requests):
                await _asgi_get(app, "/", cookie)
            cpu[variant].append((time.process_time() - begin) / args.requests * 1e6)
    return cpu


def _report_cpu(cpu: dict[str, list[float]], args: argparse.Namespace) -> None:
    print(f"in-process, {args.requests} sequential requests x {args.rounds} interleaved rounds, "
          "client-side CPU per request (median of rounds)")  # fmt: skip
    bare = statistics.median(cpu["bare"])
    get_added = statistics.median(cpu["get"]) - bare
    print(f"{'variant':<14}{'CPU us/request':>16}{'added to bare':>16}{'added / GET added':>20}")
    for variant in VARIANTS:
        median = statistics.median(cpu[variant])
        print(f"{variant:<14}{median:>16.0f}{median - bare:>16.0f}"
              f"{(median - bare) / get_added:>19.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["wrk", "cpu", "both"], default="both")
    parser.add_argument("--requests", type=int, default=3000, help="per round, cpu mode")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--pin", action=argparse.BooleanOptionalAction, default=False,
        help="servers on core 0, wrk on core 1 (default off: Redis is a third busy process)",
    )  # fmt: skip
    args = parser.parse_args()
    prefix = f"fsbench-{uuid.uuid4().hex[:8]}"
    print(f"command: python {shlex.join(['bench/sessions_bench.py', *sys.argv[1:]])}")
    if args.mode in ("wrk", "both"):
        _wrk_mode(args, prefix)
    if args.mode in ("cpu", "both"):
        try:
            cpu = asyncio.run(_cpu_rounds(args, prefix))
        finally:
            _cleanup(args.redis_url, prefix)
        print()
        _report_cpu(cpu, args)


def _wrk_mode(args: argparse.Namespace, prefix: str) -> None:
    require_wrk()
    servers = {v: start(v, args.redis_url, prefix, args.pin) for v in VARIANTS}
    rps: dict[str, list[float]] = {v: [] for v in VARIANTS}
    ratios: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        cookies = {v: login(port) for v, (_, port) in servers.items()}
        loads = {v: wrk_load(port, cookies[v], args) for v, (_, port) in servers.items()}
        for variant, (_, port) in servers.items():
            check(port, cookies[variant])
            replace(loads[variant], duration=1).run().check()  # warm-up
        for round_ in range(args.rounds):
            order = VARIANTS[round_ % len(VARIANTS) :] + VARIANTS[: round_ % len(VARIANTS)]
            this_round: dict[str, float] = {}
            for variant in order:
                this_round[variant] = loads[variant].run().check().rps
            for variant in VARIANTS:
                rps[variant].append(this_round[variant])
                ratios[variant].append(this_round[variant] / this_round["bare"])
            print(f"round {round_ + 1}: " + ", ".join(
                f"{v} {this_round[v]:.0f}/s" for v in VARIANTS), flush=True)  # fmt: skip
    finally:
        for process, _ in servers.values():
            process.terminate()
        for process, _ in servers.values():
            process.wait(timeout=10)
        _cleanup(args.redis_url, prefix)
    print()
    print(f"wrk -t1 -c{args.connections} -d{args.duration:g}s, {args.rounds} interleaved rounds, "
          "uvicorn 1 worker per variant, GET / with a valid session cookie, "
          f"{'pinned (servers core 0, wrk core 1)' if args.pin else 'not pinned'}")  # fmt: skip
    print(f"{'variant':<14}{'median req/s':>14}{'ratio to bare (median of rounds)':>36}")
    for variant in VARIANTS:
        print(f"{variant:<14}{statistics.median(rps[variant]):>14.0f}"
              f"{statistics.median(ratios[variant]):>35.2f}x")  # fmt: skip


def _cleanup(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


if __name__ == "__main__":
    main()
