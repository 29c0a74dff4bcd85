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
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]


def _pinned(core: int, command: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *command]
    return command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def _wrk(url: str, args: argparse.Namespace, duration: float) -> tuple[float, int]:
    command = _pinned(1, ["wrk", "-t1", f"-c{args.connections}", f"-d{duration:g}s", url])
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, int(non2xx.group(1)) if non2xx else 0


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

    env = {k: v for k, v in os.environ.items() if not k.startswith("FREIGHTSCALE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    print("# freightscale rate-limit bench")
    print("command:", shlex.join(["python", "bench/ratelimit.py", *sys.argv[1:]]))
    print(
        f"uvicorn 1 worker core 0 | wrk 1 thread core 1, {args.connections} connections | "
        f"{args.duration:g}s x {args.rounds} rounds interleaved | rule: {apps.LIMIT} "
        f"fixed-window by IP (never triggers) | load avg: {os.getloadavg()[0]:.1f}"
    )
    procs: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for name in names:
            port = _free_port()
            command = _pinned(0, [
                sys.executable, "-m", "uvicorn", f"bench.apps.ratelimit:{apps.VARIANTS[name]}",
                "--port", str(port), "--log-level", "warning", "--no-access-log",
                "--lifespan", "off",
            ])  # fmt: skip
            if not procs:
                print("server command:", shlex.join(command))
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env))
            urls[name] = f"http://127.0.0.1:{port}{apps.PATH}"
            _wait(urls[name], procs[-1])
        print("wrk command:", shlex.join(_pinned(1, [
            "wrk", "-t1", f"-c{args.connections}", f"-d{args.duration:g}s", urls[names[0]]
        ])))  # fmt: skip
        for name in names:
            _wrk(urls[name], args, args.warmup)
        results: dict[str, list[float]] = {n: [] for n in names}
        errors: dict[str, int] = dict.fromkeys(names, 0)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                rps, bad = _wrk(urls[name], args, args.duration)
                results[name].append(rps)
                errors[name] += bad
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
