"""Auth overhead: requests/s on a small JSON route, as ratios to no auth at all.

Variants (each its own uvicorn process, one worker, driven by wrk):

    none           (a) no authentication middleware
    hs256-verify   (b) HS256, signature checked on every request (cache_ttl=0)
    hs256-cached   (c) HS256, verification + permission caches warm
    rs256-verify   (b) RS256, signature checked on every request
    rs256-cached   (c) RS256, caches warm

The auth variants run the whole middleware: bearer parsing, verification (or
the cache), the revocation check, the RBAC permission lookup (in-process
cache; the loader is an in-memory function) and ``require_permission``.
Rounds are interleaved (a b c ... a b c ...) so drift on a shared machine
hits every variant alike; the median of the rounds is reported.

    python bench/auth_bench.py [--rounds 5] [--duration 3] [--connections 32]
    python bench/auth_bench.py --inprocess [--requests 20000]   # no server, no wrk
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from bench.auth_app import SECRET, build  # noqa: E402
from bench.net import free_port, wait_port  # noqa: E402
from bench.wrk import SERVER_CORE, WRK_CORE, Wrk, can_pin, cpu_seconds, pinned, require_wrk  # noqa: E402

VARIANTS = ["none", "hs256-verify", "hs256-cached", "rs256-verify", "rs256-cached"]


def make_key() -> tuple[Any, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key, pem


def token_for(variant: str, key: Any) -> str:
    now = int(time.time())
    claims = {
        "sub": "user-1", "tenant": "acme", "roles": ["dispatcher"], "iat": now,
        "exp": now + 3600, "jti": "bench-1",
    }  # fmt: skip
    if variant.startswith("rs256"):
        return jwt.encode(claims, key, algorithm="RS256")
    return jwt.encode(claims, SECRET, algorithm="HS256")


def wrk_load(port: int, token: str | None, args: argparse.Namespace) -> Wrk:
    """The wrk run against one variant's server, with its bearer token (if any)."""
    return Wrk(
        f"http://127.0.0.1:{port}/json", connections=args.connections, duration=args.duration,
        headers={"Authorization": f"Bearer {token}"} if token else {},
        core=WRK_CORE if args.pin else None,
    )  # fmt: skip


def measure(load: Wrk, pid: int) -> tuple[float, float]:
    """Run ``load``; return (requests/s of wall time, requests per CPU-second of ``pid``)."""
    cpu_before = cpu_seconds(pid)
    result = load.run().check(socket_errors=False)
    cpu = cpu_seconds(pid) - cpu_before
    return result.rps, result.requests / cpu if cpu > 0 else 0.0


def with_servers(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    require_wrk()
    key, pem = make_key()
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}", FS_BENCH_KEY=pem)
    try:
        for variant in VARIANTS:
            port = free_port()
            command = [sys.executable, "-m", "uvicorn", "bench.auth_app:app", "--port", str(port),
                       "--log-level", "warning", "--no-access-log", "--loop", "uvloop",
                       "--http", "httptools"]  # fmt: skip
            proc = subprocess.Popen(
                pinned(SERVER_CORE if args.pin else None, command),
                cwd=ROOT, env=dict(env, FS_BENCH_VARIANT=variant),
            )  # fmt: skip
            servers[variant] = (proc, port)
        for _, port in servers.values():
            wait_port(port, timeout=120)
        tokens = {v: token_for(v, key) if v != "none" else None for v in VARIANTS}
        loads = {v: wrk_load(port, tokens[v], args) for v, (_, port) in servers.items()}
        for load in loads.values():  # warm up (and warm the caches)
            replace(load, duration=1, connections=4).run().check(socket_errors=False)
        results: dict[str, list[float]] = {v: [] for v in VARIANTS}
        per_cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for round_no in range(args.rounds):
            for variant in VARIANTS:
                rps, rpc = measure(loads[variant], servers[variant][0].pid)
                results[variant].append(rps)
                per_cpu[variant].append(rpc)
            print(f"round {round_no + 1}: " + "  ".join(
                f"{v}={results[v][-1]:.0f}/s ({per_cpu[v][-1]:.0f}/cpu-s)" for v in VARIANTS),
                flush=True)  # fmt: skip
        return results, per_cpu
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=10)


async def drive(app: Any, token: str | None, requests: int) -> float:
    headers = [(b"host", b"bench")]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "root_path": "", "query_string": b"", "headers": headers,
        "server": ("bench", 80), "client": ("127.0.0.1", 1), "path": "/json",
        "raw_path": b"/json",
    }  # fmt: skip
    bad: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            bad.append(message["status"])

    # CPU time of this process: on a shared machine, time spent descheduled is not ours.
    start = time.process_time()
    for _ in range(requests):
        await app(dict(scope), receive, send)
    elapsed = time.process_time() - start
    if bad:
        raise RuntimeError(f"non-200 responses: {bad[:5]}")
    return requests / elapsed


def in_process(args: argparse.Namespace) -> dict[str, list[float]]:
    key, pem = make_key()
    apps = {v: build(v, pem) for v in VARIANTS}
    tokens = {v: token_for(v, key) if v != "none" else None for v in VARIANTS}
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}

    async def main() -> None:
        for variant in VARIANTS:
            await drive(apps[variant], tokens[variant], 200)  # warm up
        for round_no in range(args.rounds):
            for variant in VARIANTS:
                results[variant].append(await drive(apps[variant], tokens[variant], args.requests))
            print(f"round {round_no + 1}: " + "  ".join(
                f"{v}={results[v][-1]:.0f}" for v in VARIANTS), flush=True)  # fmt: skip

    asyncio.run(main())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--inprocess", action="store_true", help="drive ASGI directly")
    parser.add_argument("--requests", type=int, default=20_000, help="per in-process round")
    parser.add_argument(
        "--pin", action=argparse.BooleanOptionalAction, default=True,
        help="pin wrk and the servers to two different cores (default on, with >= 2 cores)",
    )  # fmt: skip
    args = parser.parse_args()
    args.pin = args.pin and can_pin()
    pin = (WRK_CORE, SERVER_CORE) if args.pin else None
    print("command: python " + " ".join(sys.argv))
    print(f"cpus: {os.cpu_count()}  load average: {os.getloadavg()}  pinned (wrk, servers): {pin}")
    if args.inprocess:
        report("requests per CPU-second, in process", in_process(args))
        return
    wall, per_cpu = with_servers(args)
    report("requests/s (wall clock; noisy on a shared machine)", wall)
    report("requests per CPU-second of the server process", per_cpu)


def report(title: str, results: dict[str, list[float]]) -> None:
    """Medians and their ratio to ``none``, and the median of the per-round ratios.

    A round runs every variant back to back, so its own ratio is the one least
    touched by drift over the run; both are printed.
    """
    baseline = statistics.median(results["none"])
    print(f"\n{title}")
    print(f"{'variant':<14} {'median':>10} {'ratio to none':>14} {'per-round ratios (median)':>27}")
    for variant in VARIANTS:
        median = statistics.median(results[variant])
        paired = [v / n for v, n in zip(results[variant], results["none"], strict=True)]
        print(
            f"{variant:<14} {median:>10.0f} {median / baseline:>13.2f}x "
            f"{statistics.median(paired):>26.2f}x"
        )


if __name__ == "__main__":
    main()
