"""Rate-limit overhead: requests/s with no limiter vs freightscale vs slowapi.

Self-contained (uvicorn + wrk): every variant of ``bench/apps/ratelimit.py``
runs in its own uvicorn (one worker, pinned to core 0); wrk (pinned to core 1)
loads them in turn, round after round (A B C … A B C …), and the script
prints the median requests/s of each and its ratio to the first variant
(no limiter) measured in the same run. Run from the repository root::

    python bench/ratelimit.py
    python bench/ratelimit.py --rounds 3 --duration 5 --connections 64
    python bench/ratelimit.py --variants rl-none,rl-fs-redis,rl-slowapi-redis

Once ``bench/run.py`` is on main the same variants run there too:
``python bench/run.py --variants rl-none,rl-fs-memory,rl-fs-redis``.
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
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from bench.net import free_port  # noqa: E402
from bench.wrk import SERVER_CORE, WRK_CORE, Wrk, pin_server, require_wrk  # noqa: E402


def _wait(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server for {url} did not answer within {timeout}s")


def main() -> int:
    from bench.apps import ratelimit as apps

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(apps.DEFAULT))
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in apps.VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {sorted(apps.VARIANTS)}")
    require_wrk()

    env = {k: v for k, v in os.environ.items() if not k.startswith("FREIGHTSCALE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    print("# freightscale rate-limit bench")
    print("command:", shlex.join(["python", "bench/ratelimit.py", *sys.argv[1:]]))
    print(
        f"uvicorn 1 worker core {SERVER_CORE} | wrk 1 thread core {WRK_CORE}, "
        f"{args.connections} connections | {args.duration:g}s x {args.rounds} rounds "
        f"interleaved | rule: {apps.LIMIT} "
        f"fixed-window by IP (never triggers) | load avg: {os.getloadavg()[0]:.1f}"
    )
    procs: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for name in names:
            port = free_port()
            command = pin_server([
                sys.executable, "-m", "uvicorn", f"bench.apps.ratelimit:{apps.VARIANTS[name]}",
                "--port", str(port), "--log-level", "warning", "--no-access-log",
                "--lifespan", "off",
            ])  # fmt: skip
            if not procs:
                print("server command:", shlex.join(command))
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env))
            urls[name] = f"http://127.0.0.1:{port}{apps.PATH}"
            _wait(urls[name], procs[-1])
        load = Wrk(urls[names[0]], connections=args.connections, duration=args.duration)
        print("wrk command:", shlex.join(load.command()))
        for name in names if args.warmup > 0 else ():
            replace(load, url=urls[name], duration=args.warmup).run()
        results: dict[str, list[float]] = {n: [] for n in names}
        errors: dict[str, int] = dict.fromkeys(names, 0)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                result = replace(load, url=urls[name]).run()
                results[name].append(result.rps)
                errors[name] += result.non_2xx
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
    base = statistics.median(results[names[0]])
    print(f"\n{'variant':28} {'req/s (median)':>14} {'ratio':>7}  rounds / non-2xx")
    for name in names:
        med = statistics.median(results[name])
        rounds = " ".join(f"{v:.0f}" for v in results[name])
        print(f"{name:28} {med:14.0f} {med / base:7.2f}  [{rounds}] / {errors[name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
