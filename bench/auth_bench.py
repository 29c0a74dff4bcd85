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
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from bench.auth_app import SECRET, build  # noqa: E402
from bench.net import free_port, wait_port  # noqa: E402

VARIANTS = ["none", "hs256-verify", "hs256-cached", "rs256-verify", "rs256-cached"]

PIN: tuple[int, int] | None = None
"""(wrk's core, the servers' core) with --pin: the scheduler no longer moves
either, so rounds differ less (on two cores the pair would otherwise share)."""


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    port: int, token: str | None, duration: float, connections: int, pid: int | None = None
) -> tuple[float, float]:
    """Run wrk; return (requests/s of wall time, requests per CPU-second of the server)."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s"]
    if PIN is not None:  # the load generator on its own core, away from the server's
        args[:0] = ["taskset", "-c", str(PIN[0])]
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    args.append(f"http://127.0.0.1:{port}/json")
    cpu_before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu_before if pid else 0.0
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if match is None or total is None:
        raise RuntimeError(out)
    per_cpu = int(total.group(1)) / cpu if cpu > 0 else 0.0
    return float(match.group(1)), per_cpu


def with_servers(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk); or use --inprocess")
    key, pem = make_key()
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}", FS_BENCH_KEY=pem)
    try:
        for variant in VARIANTS:
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "bench.auth_app:app", "--port", str(port),
                 "--log-level", "warning", "--no-access-log", "--loop", "uvloop",
                 "--http", "httptools"],
                cwd=ROOT, env=dict(env, FS_BENCH_VARIANT=variant),
            )  # fmt: skip
            if PIN is not None:
                os.sched_setaffinity(proc.pid, {PIN[1]})
            servers[variant] = (proc, port)
        for _, port in servers.values():
            wait_port(port, timeout=120)
        tokens = {v: token_for(v, key) if v != "none" else None for v in VARIANTS}
        for variant, (_, port) in servers.items():  # warm up (and warm the caches)
            run_wrk(port, tokens[variant], 1, 4)
        results: dict[str, list[float]] = {v: [] for v in VARIANTS}
        per_cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for round_no in range(args.rounds):
            for variant in VARIANTS:
                proc, port = servers[variant]
                rps, rpc = run_wrk(port, tokens[variant], args.duration, args.connections, proc.pid)
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
    global PIN
    cores = sorted(os.sched_getaffinity(0))
    if args.pin and len(cores) >= 2 and shutil.which("taskset"):
        PIN = (cores[0], cores[1])
    print("command: python " + " ".join(sys.argv))
    print(f"cpus: {os.cpu_count()}  load average: {os.getloadavg()}  pinned (wrk, servers): {PIN}")
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
