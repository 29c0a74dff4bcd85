"""Start-up time of an app with server-side sessions: 100,000 sessions in Redis vs none.

The legacy FreightOps restored every session from a file at start-up, so
start-up grew with the session count. Here a private redis-server (on a free
port, torn down afterwards) holds either 0 or N sessions, and a uvicorn
process serving freightscale's SessionMiddleware (``bench/sessions_apps.py``)
is started; the time from spawning it to its first 200 answer to a request
*that loads a session* is measured, alternating the two cases over several
rounds, and the ratio is printed.

    python bench/sessions_startup.py [--sessions 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from bench.net import free_port, wait_port  # noqa: E402
from freightscale.sessions.backends import encode_record  # noqa: E402
from freightscale.sessions.cookies import CookieSigner  # noqa: E402


def fill(client: redis.Redis, count: int, prefix: str) -> None:
    client.flushall()  # a private server started by this script, never a shared one
    value = encode_record({"user_id": 4711, "tenant": "acme"}, 1, time.time() + 3600)
    script = (
        "for i = 1, tonumber(ARGV[1]) do "
        "redis.call('SET', ARGV[3] .. ':session:s' .. i, ARGV[2], 'EX', 3600) end"
    )
    client.eval(script, 0, count, value, prefix)
    client.set(f"{prefix}:session:{'A' * 43}", value, ex=3600)  # the probe's session


def time_to_first_session_read(redis_url: str, prefix: str, cookie: str) -> float:
    port = free_port()
    env = dict(os.environ, BENCH_VARIANT="freightscale", BENCH_REDIS_URL=redis_url,
               BENCH_PREFIX=prefix)  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench")])
    command = [sys.executable, "-m", "uvicorn", "sessions_apps:app", "--port", str(port),
               "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning"]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        wait_port(port)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Cookie": cookie})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        elapsed = time.perf_counter() - started
        if b'"user":4711' not in body:
            raise SystemExit(f"the session was not read: {body!r}")
        return elapsed
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="fs-bench-redis-")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    prefix = "fsbench"
    secret = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
    cookie = "fs_session=" + CookieSigner([secret]).sign("A" * 43)
    times: dict[int, list[float]] = {0: [], args.sessions: []}
    try:
        wait_port(port)
        client = redis.Redis.from_url(url)
        for _ in range(args.rounds):
            for count in times:
                fill(client, count, prefix)
                times[count].append(time_to_first_session_read(url, prefix, cookie))
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"command: python {shlex.join(['bench/sessions_startup.py', *sys.argv[1:]])}")
    print("time from spawning uvicorn to its first 200 on a route that loads a session "
          f"(median of {args.rounds} alternating rounds)")  # fmt: skip
    base = statistics.median(times[0])
    for count, samples in times.items():
        median = statistics.median(samples)
        print(f"{count:>8} sessions in Redis: {median * 1000:7.0f} ms   ratio {median / base:.2f}x"
              f"   (all: {', '.join(f'{t * 1000:.0f}' for t in samples)} ms)")  # fmt: skip


if __name__ == "__main__":
    main()
