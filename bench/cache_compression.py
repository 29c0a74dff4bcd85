"""Response cache and compression benchmark: requests/s as ratios to the bare handler.

Every variant (see ``bench/cache_compression_apps.py``) runs in its own
uvicorn process (one worker, no access log, pinned to core 0 when taskset
exists); wrk (pinned to core 1) loads them in turn, round after round
(A B C … A B C …), so a noisy neighbour hits every variant alike. Ratios are
to ``bare`` measured in the same run. Run from the repository root::

    python bench/cache_compression.py
    python bench/cache_compression.py --duration 5 --rounds 3 --connections 64
    python bench/cache_compression.py --variants bare,fs-br4,brotli-asgi

Needs wrk and a Redis at FREIGHTSCALE_BENCH_REDIS_URL (default
redis://127.0.0.1:6379/0); keys go under a unique prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench"), str(ROOT)]

from cache_compression_apps import PATH, VARIANTS  # noqa: E402

from bench.net import free_port  # noqa: E402
from bench.wrk import Wrk, pin_server, require_wrk  # noqa: E402


def wait_ready(url: str, accept: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, headers={"Accept-Encoding": accept or "identity"})
            with urllib.request.urlopen(req, timeout=2) as resp:
                resp.read()
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def wrk_load(url: str, accept: str, args: argparse.Namespace) -> Wrk:
    """The wrk run against one variant, sending its Accept-Encoding (if any)."""
    return Wrk(
        url, connections=args.connections, duration=args.duration, latency=True,
        headers={"Accept-Encoding": accept} if accept else {},
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    require_wrk()

    prefix = f"fsbench-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'bench'}",
        "FREIGHTSCALE_BENCH_PREFIX": prefix,
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    results: dict[str, list[float]] = {n: [] for n in names}
    try:
        for name in names:
            attribute, _ = VARIANTS[name]
            port = free_port()
            procs[name] = subprocess.Popen(
                pin_server([
                    sys.executable, "-m", "uvicorn", f"cache_compression_apps:{attribute}",
                    "--port", str(port), "--log-level", "warning", "--no-access-log",
                    "--loop", "uvloop", "--http", "httptools",
                ]),
                env=env, cwd=ROOT,
            )  # fmt: skip
            urls[name] = f"http://127.0.0.1:{port}{PATH}"
        loads = {name: wrk_load(urls[name], VARIANTS[name][1], args) for name in names}
        for name in names:
            wait_ready(urls[name], VARIANTS[name][1])
            # warm-up, also fills the caches
            replace(loads[name], duration=1).run().check(socket_errors=False)
        for _ in range(args.rounds):
            for name in names:
                results[name].append(loads[name].run().check(socket_errors=False).rps)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(10)
        _cleanup(prefix)

    base = statistics.median(results[names[0]])
    print(f"command: python bench/cache_compression.py {shlex.join(sys.argv[1:])}".rstrip())
    print(f"wrk: -t1 -c{args.connections} -d{args.duration}s, {args.rounds} interleaved rounds; "
          f"uvicorn (uvloop, httptools), 1 worker; baseline = {names[0]}")  # fmt: skip
    print(f"{'variant':<18} {'accept-encoding':<16} {'req/s (median)':>15} {'ratio':>7}  rounds")
    for name in names:
        med = statistics.median(results[name])
        rounds = " ".join(f"{r:.0f}" for r in results[name])
        accept = VARIANTS[name][1] or "-"
        print(f"{name:<18} {accept:<16} {med:>15.0f} {med / base:>6.2f}x  {rounds}")
    return 0


def _cleanup(prefix: str) -> None:
    import redis

    url = os.environ.get("FREIGHTSCALE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
