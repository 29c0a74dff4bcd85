"""Overhead benchmark: the same route under several variants, interleaved, vs a baseline.

Starts every chosen variant (an ASGI app named by ``bench/apps/*.py``) under
one server (one worker, access log off, pinned to core 0), loads each in turn
with wrk pinned to core 1, round after round (A B C A B C ...), and prints
requests/s, p50 and p99 per variant with its ratio to the first (baseline)
variant, plus the exact commands. Run from the repository root::

    python bench/run.py                                   # core variants, uvicorn + uvloop
    python bench/run.py --server granian --rounds 3 --duration 5
    python bench/run.py --variants bare,stack-telemetry --connections 256
    python bench/run.py --list

Compare p99 only between variants of the same run (same server and loop):
under uvicorn + uvloop at 1000 connections a few connections starve
(p99 of seconds) even for a bare app.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import shlex
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("uvicorn-uvloop", "uvicorn-asyncio", "granian")

sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from bench.net import free_port  # noqa: E402
from bench.wrk import SERVER_CORE, WRK_CORE, Wrk, WrkResult, pin_server, require_wrk  # noqa: E402


@dataclass
class Variant:
    """One app to measure."""

    name: str
    target: str  # module:attribute
    path: str
    results: list[WrkResult] = field(default_factory=list)


def discover() -> dict[str, Variant]:
    """Import every ``bench.apps`` module and collect its ``VARIANTS``."""
    import bench.apps

    found: dict[str, Variant] = {}
    for info in pkgutil.iter_modules(bench.apps.__path__):
        module = importlib.import_module(f"bench.apps.{info.name}")
        for name, attribute in getattr(module, "VARIANTS", {}).items():
            if name in found:
                raise SystemExit(f"variant {name!r} is defined twice (bench/apps/{info.name}.py)")
            found[name] = Variant(name, f"{module.__name__}:{attribute}", module.PATH)
    return found


def default_variants() -> list[str]:
    from bench.apps import core

    return list(core.DEFAULT)


def server_command(server: str, target: str, port: int) -> list[str]:
    """The command that serves ``target`` on ``port`` with one worker and no access log."""
    if server.startswith("uvicorn"):
        loop = server.split("-", 1)[1]
        command = [
            sys.executable, "-m", "uvicorn", target,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--loop", loop, "--http", "httptools", "--no-access-log",
            "--log-level", "warning", "--lifespan", "on",
        ]  # fmt: skip
    elif server == "granian":
        granian = str(Path(sys.executable).with_name("granian"))
        command = [
            granian, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop",
            "--no-ws", "--no-access-log", "--log-level", "warning", target,
        ]  # fmt: skip
    else:
        raise SystemExit(f"unknown server {server!r}; choose one of {', '.join(SERVERS)}")
    return pin_server(command)


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server for {url} did not answer within {timeout}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=SERVERS, default="uvicorn-uvloop")
    parser.add_argument("--variants", help="comma-separated names; the first is the baseline")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per variant")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    args = parser.parse_args(argv)

    available = discover()
    if args.list:
        for variant in available.values():
            print(f"{variant.name:24} {variant.target} {variant.path}")
        return 0
    names = args.variants.split(",") if args.variants else default_variants()
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; see --list")
    require_wrk()
    variants = [available[n] for n in names]

    env = {k: v for k, v in os.environ.items() if not k.startswith("FREIGHTSCALE_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    print("# freightscale bench")
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print(
        f"server: {args.server} (1 worker, core {SERVER_CORE}) | wrk: {args.connections} "
        f"connections, {args.threads} thread(s), core {WRK_CORE} | {args.duration:g}s x "
        f"{args.rounds} rounds, interleaved | cpus: {os.cpu_count()}"
    )
    processes: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for variant in variants:
            port = free_port()
            command = server_command(args.server, variant.target, port)
            if variant is variants[0]:
                print("server command:", shlex.join(command))
            process = subprocess.Popen(command, cwd=ROOT, env=env)
            processes.append(process)
            urls[variant.name] = f"http://127.0.0.1:{port}{variant.path}"
            wait_until_up(urls[variant.name], process)
        load = Wrk(
            urls[variants[0].name],
            connections=args.connections,
            duration=args.duration,
            threads=args.threads,
            timeout=5,
        )
        print("wrk command:", shlex.join(load.command()))
        if args.warmup > 0:
            for variant in variants:
                replace(load, url=urls[variant.name], duration=args.warmup).run()
        for round_number in range(1, args.rounds + 1):
            for variant in variants:
                result = replace(load, url=urls[variant.name]).run()
                variant.results.append(result)
                print(
                    f"round {round_number} {variant.name:22} {result.rps:10.0f} req/s "
                    f"p50 {result.latency_us[50] / 1000:7.2f} ms  "
                    f"p99 {result.latency_us[99] / 1000:7.2f} ms  errors {result.errors}"
                )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

    base = variants[0]
    print()
    print(f"median of {args.rounds} round(s); ratios vs {base.name!r} (same run, same server)")
    print(f"{'variant':22} {'req/s':>10} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99 ratio':>9}")
    for variant in variants:
        rps, p50, p99 = _rps(variant), _percentile(variant, 50), _percentile(variant, 99)
        print(
            f"{variant.name:22} {rps:10.0f} {rps / _rps(base):7.3f} "
            f"{p50 / 1000:8.2f} {p99 / 1000:8.2f} {p99 / _percentile(base, 99):9.3f}"
        )
    return 0


def _rps(variant: Variant) -> float:
    """Median requests/s over the rounds."""
    return statistics.median(r.rps for r in variant.results)


def _percentile(variant: Variant, percentile: int) -> float:
    """Median latency percentile (µs) over the rounds."""
    return statistics.median(r.latency_us[percentile] for r in variant.results)


if __name__ == "__main__":
    sys.exit(main())
