"""FreightOps load test: the naive profile vs the freightscale profile, by users.

    python bench/load/run.py                                  # full sweep → docs/performance.md
    python bench/load/run.py --users 100,250 --duration 15 --shipments 20000 --no-report

Each simulated user is one wrk connection holding its own login session and
token, sending ~70 % list/detail reads, 20 % dashboard and 10 % writes with a
~1 s think time (``bench/load/freightops.lua``), so N connections ≈ N
concurrent users. For every (profile, users) step the runner records
requests/s, p50/p95/p99 latency (wrk's latency object), non-2xx responses
by status, socket errors, the peak number of the app's database connections
(sampled from ``pg_stat_activity`` by ``application_name``), the peak total
RSS and the CPU% of all server processes.

Services: by default a **private** PostgreSQL (``initdb`` + ``pg_ctl`` from
/usr/lib/postgresql/*/bin on a free port, ``max_connections=600``) and a
private ``redis-server``, both torn down afterwards. The naive profile's
unbounded pool can open hundreds of connections; on the shared server
(``max_connections=100``) that would break everyone else's work, and the
shared server's config must not be changed. ``--postgres shared`` uses a
fresh ``freightops_bench_*`` database on 127.0.0.1:5432 instead (dropped
afterwards); use it only for small user counts.

The server runs pinned to ``--server-cores`` (default 0) and wrk to
``--load-cores`` (default 1), with ``taskset`` when the machine has two cores
(the convention of ``bench/wrk.py``); PostgreSQL and Redis are not pinned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LUA = Path(__file__).resolve().parent / "freightops.lua"
SECRET = "freightops-bench-secret-" + "0" * 24
# Generous plan limits for the sweep: the test measures serving, not the
# limiter's 429s (docs/performance.md says so); --plan-limits overrides.
BENCH_PLAN_LIMITS = (
    '{"free": "5000/second", "standard": "5000/second", "enterprise": "5000/second"}'
)

SERVER_FULL = -1  # peak_db_connections when the sampler itself was refused a connection
MIN_REQUESTS = 10  # fewer completed requests than this: no latency figures
NOTES_MARKER = "<!-- notes: kept when bench/load/run.py rewrites this page -->"

sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from bench.net import free_port, wait_port  # noqa: E402
from bench.wrk import Wrk, cpu_seconds, pinned, require_wrk  # noqa: E402

# --------------------------------------------------------------------------- services


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a free port, owned by the ``postgres`` user."""

    def __init__(self, max_connections: int = 600) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not bins:
            raise SystemExit("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.bin = bins[-1]
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fo-bench-pg-"))
        self.max_connections = max_connections

    def _as_postgres(self, *args: str) -> None:
        command = [str(a) for a in args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> str:
        shutil.chown(self.dir, "postgres") if os.geteuid() == 0 else None
        data = self.dir / "data"
        self._as_postgres(self.bin / "initdb", "-D", data, "-U", "postgres", "-A", "trust")
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.dir} -c max_connections={self.max_connections} "
            "-c shared_buffers=256MB -c fsync=off -c synchronous_commit=off"
        )
        self._as_postgres(
            self.bin / "pg_ctl", "-D", data, "-o", options, "-l", self.dir / "log", "-w", "start"
        )
        wait_port(self.port)
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._as_postgres(
                self.bin / "pg_ctl", "-D", self.dir / "data", "-m", "immediate", "stop"
            )
        shutil.rmtree(self.dir, ignore_errors=True)


class SharedPostgresDatabase:
    """A fresh ``freightops_bench_*`` database on the shared server, dropped afterwards."""

    def __init__(self, admin_url: str = "postgresql://postgres@127.0.0.1:5432/postgres") -> None:
        self.admin_url = admin_url
        self.name = f"freightops_bench_{os.getpid()}"

    def _sql(self, statement: str) -> None:
        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(self.admin_url, timeout=10)
            try:
                await conn.execute(statement)
            finally:
                await conn.close()

        asyncio.run(run())

    def start(self) -> str:
        self._sql(f'CREATE DATABASE "{self.name}"')
        host = self.admin_url.split("@", 1)[1].rsplit("/", 1)[0]
        return f"postgresql+asyncpg://postgres@{host}/{self.name}"

    def stop(self) -> None:
        self._sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class PrivateRedis:
    """A throw-away redis-server on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port)
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)


# --------------------------------------------------------------------------- app


def app_env(profile: str, database_url: str, redis_url: str, session_dir: Path) -> dict[str, str]:
    """The server's whole configuration, as environment variables (production mode)."""
    return {
        "FREIGHTSCALE_ENVIRONMENT": "production",
        "FREIGHTSCALE_DATABASE__URL": database_url,
        "FREIGHTSCALE_DATABASE__APPLICATION_NAME": f"freightops-bench-{profile}",
        "FREIGHTSCALE_REDIS__URL": redis_url,
        "FREIGHTSCALE_REDIS__KEY_PREFIX": "fobench",
        "FREIGHTSCALE_AUTH__SECRET": SECRET,
        # One steady pool per worker: overflow connections are opened and closed
        # again under sustained load (churn), and with asyncpg each pre-ping is
        # three round trips (BEGIN; ping; ROLLBACK) per checkout.
        "FREIGHTSCALE_DATABASE__POOL_SIZE": "20",
        "FREIGHTSCALE_DATABASE__MAX_OVERFLOW": "0",
        "FREIGHTSCALE_DATABASE__POOL_PRE_PING": "false",
        # The freightscale profile composes the database layer through build_stack.
        "FREIGHTSCALE_DATABASE__ENABLED": "true" if profile == "freightscale" else "false",
        "FREIGHTOPS_PROFILE": profile,
        "FREIGHTOPS_SESSION_DIR": str(session_dir),
        "FREIGHTOPS_PLAN_LIMITS": BENCH_PLAN_LIMITS,
    }


def seed_database(database_url: str, shipments: int, users: int) -> dict[str, int]:
    from examples.freightops.seed import SeedPlan, create_schema, seed
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> dict[str, int]:
        engine = create_async_engine(database_url)
        try:
            await create_schema(engine, drop=True)
            plan = SeedPlan(tenants=5, users=users, shipments=shipments, quotes=5_000)
            return await seed(engine, plan)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def mint_users(env: dict[str, str], count: int, path: Path) -> None:
    """Open ``count`` login sessions in the profile's session backend; write the users file."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from examples.freightops.config import AppConfig
        from examples.freightops.runtime import Services
        from examples.freightops.seed import mint_sessions

        from freightscale.settings import FreightScaleSettings

        async def run() -> None:
            services = Services.open(FreightScaleSettings(), AppConfig())
            try:
                users = await mint_sessions(services, count)
            finally:
                await services.aclose()
            with path.open("w") as out:
                for user in users:
                    ids = ",".join(map(str, user.shipment_ids))
                    out.write(f"{user.token} {user.tenant_id} {ids}\n")

        asyncio.run(run())
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def server_command(kind: str, port: int, workers: int) -> list[str]:
    target = "examples.freightops.application:create_app"
    if kind == "granian":
        return [
            sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--loop", "uvloop", "--backlog", "4096", "--no-access-log", target,
        ]  # fmt: skip
    loop = "asyncio" if kind == "uvicorn-asyncio" else "uvloop"
    return [
        sys.executable, "-m", "uvicorn", "--factory", target,
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--loop", loop, "--http", "httptools", "--backlog", "4096",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def start_server(
    kind: str, env: dict[str, str], cores: str, workers: int, log: Path
) -> ServerProcess:
    port = free_port()
    command = pinned(cores, server_command(kind, port, workers))
    full_env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FREIGHTSCALE_", "FREIGHTOPS_"))
        },
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        **env,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_port(port, timeout=90)
        _wait_http(server.url + "/")
    except Exception:
        server.stop()
        raise SystemExit(f"server failed to start:\n{log.read_text()[-3000:]}") from None
    return server


def _wait_http(url: str, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


def wait_idle(url: str, timeout: float = 120) -> None:
    """Wait until ``GET /`` answers within half a second (the backlog is drained)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url + "/", timeout=5) as response:
                if response.status == 200 and time.monotonic() - started < 0.5:
                    return
        except OSError:
            pass
        time.sleep(1)


# --------------------------------------------------------------------------- sampling


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


@dataclass
class Sampler:
    """Samples DB connections and RSS every ``interval`` s in a background thread."""

    root_pid: int
    admin_dsn: str
    application_name: str
    interval: float = 0.5
    peak_db: int = 0
    peak_rss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        import asyncpg

        conn = None
        try:
            while not self._stop.is_set():
                if conn is None and self.peak_db >= 0:
                    try:
                        conn = await asyncpg.connect(self.admin_dsn, timeout=10)
                    except asyncpg.TooManyConnectionsError:
                        # The app holds every connection the server allows.
                        self.peak_db = SERVER_FULL
                if conn is not None:
                    count = await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                        self.application_name,
                    )
                    self.peak_db = max(self.peak_db, int(count))
                self.peak_rss = max(self.peak_rss, rss_bytes(process_tree(self.root_pid)))
                await asyncio.sleep(self.interval)
        finally:
            if conn is not None:
                await conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


# --------------------------------------------------------------------------- wrk


def user_load(
    url: str, users_file: Path, users: int, duration: float, think_ms: int, threads: int,
    cores: str,
) -> Wrk:  # fmt: skip
    """wrk as ``users`` logged-in users (one connection each) with ``freightops.lua``."""
    threads = max(1, min(threads, users))
    return Wrk(
        url, connections=users, duration=duration, threads=threads, timeout=10, script=LUA,
        script_args=(str(users_file), str(think_ms), str(threads)), core=cores,
    )  # fmt: skip


@dataclass
class Step:
    """One measured (profile, users) point."""

    profile: str
    server: str
    users: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    peak_db_connections: int
    peak_rss_mb: float
    server_cpu_percent: float

    @property
    def cpu_ms_per_request(self) -> float | None:
        """Server CPU time per completed request: capacity on an unshared core."""
        if not self.requests:
            return None
        return self.server_cpu_percent / 100 * self.duration_s * 1000 / self.requests

    @property
    def non_2xx(self) -> dict[str, int]:
        return {s: n for s, n in sorted(self.statuses.items()) if not s.startswith("2")}

    @property
    def errors(self) -> int:
        return sum(self.non_2xx.values()) + sum(self.socket_errors.values())


def measure(
    profile: str, server_kind: str, server: ServerProcess, users_file: Path, users: int,
    args: argparse.Namespace, admin_dsn: str,
) -> Step:  # fmt: skip
    step_file = users_file.with_suffix(f".{users}.txt")
    with users_file.open() as src, step_file.open("w") as dst:
        for n, line in enumerate(src):
            if n >= users:
                break
            dst.write(line)
    # Start every step from an idle server: after an overloaded step the server
    # is still working through requests whose clients have gone.
    wait_idle(server.url)
    load = user_load(server.url, step_file, users, args.duration, args.think_ms, args.threads,
                     args.load_cores)  # fmt: skip
    if args.warmup > 0:
        replace(load, duration=args.warmup).run()
    sampler = Sampler(server.process.pid, admin_dsn, f"freightops-bench-{profile}")
    tree = process_tree(server.process.pid)
    cpu0, wall0 = cpu_seconds(*tree), time.monotonic()
    sampler.start()
    try:
        result = load.run()
    finally:
        sampler.stop()
    wall = time.monotonic() - wall0
    cpu = (cpu_seconds(*process_tree(server.process.pid)) - cpu0) / wall * 100
    step = Step(
        profile=profile,
        server=server_kind,
        users=users,
        duration_s=round(result.seconds, 1),
        requests=result.requests,
        rps=round(result.rps, 1),
        p50_ms=result.latency_us[50] / 1000,
        p95_ms=result.latency_us[95] / 1000,
        p99_ms=result.latency_us[99] / 1000,
        max_ms=result.max_latency_us / 1000,
        statuses=dict(result.statuses),
        socket_errors=result.socket_errors.nonzero(),
        peak_db_connections=sampler.peak_db,
        peak_rss_mb=round(sampler.peak_rss / 2**20, 1),
        server_cpu_percent=round(cpu, 1),
    )
    print(
        f"  {profile:12} {server_kind:15} users={users:5}  {step.rps:8.1f} req/s  "
        f"p50={step.p50_ms:7.1f}  p95={step.p95_ms:7.1f}  p99={step.p99_ms:7.1f} ms  "
        f"non-2xx={step.non_2xx or 0}  sock={step.socket_errors or 0}  "
        f"db={step.peak_db_connections}  rss={step.peak_rss_mb} MB  cpu={step.server_cpu_percent}%",
        flush=True,
    )
    return step


# --------------------------------------------------------------------------- report


def write_report(steps: list[Step], args: argparse.Namespace, command: str, out: Path) -> None:
    chart = out.parent / "img" / "load-p95.png"
    chart.parent.mkdir(parents=True, exist_ok=True)
    _chart(steps, chart)
    notes = ""
    if out.exists() and NOTES_MARKER in out.read_text():
        # Hand-written analysis below the marker survives a re-run.
        notes = out.read_text().split(NOTES_MARKER, 1)[1]
    report = render_report(steps, args, command, chart.relative_to(out.parent))
    out.write_text(report + "\n" + NOTES_MARKER + (notes or "\n"))
    print(f"wrote {out} and {chart}")


def _chart(steps: list[Step], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for key in sorted({(s.profile, s.server) for s in steps}):
        points = sorted((s.users, s.p95_ms) for s in steps if (s.profile, s.server) == key)
        ax.plot(*zip(*points, strict=True), marker="o", label=f"{key[0]} ({key[1]})")
    ax.axhline(200, color="red", linestyle="--", linewidth=1, label="p95 target 200 ms")
    ax.set_xlabel("concurrent users (wrk connections, ~1 s think time)")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_yscale("log")
    ax.set_title("FreightOps: p95 latency vs users")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render_report(steps: list[Step], args: argparse.Namespace, command: str, chart: Path) -> str:
    lines = [
        "# Performance: FreightOps before and after",
        "",
        "Generated by `bench/load/run.py`; numbers below are what that run measured, on the",
        "machine described, and nothing else. Rerun it to get yours.",
        "",
        f"- command: `{command}`",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} CPU(s) ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, shared with other jobs while it ran "
        f"(load average at the end: {os.getloadavg()[0]:.1f})",
        f"- server: `{', '.join(sorted({s.server for s in steps}))}` pinned to core(s) "
        f"{args.server_cores}, {args.workers} worker(s); wrk pinned to core(s) {args.load_cores}; "
        "PostgreSQL and Redis unpinned",
        f"- data: 5 tenants, {args.seed_users} users, {args.shipments} shipments with events; "
        f"{args.duration:g} s measured per step after {args.warmup:g} s warm-up; "
        f"think time {args.think_ms} ms ± 50 %",
        "",
        f"![p95 latency vs users]({chart.as_posix()})",
        "",
        "| profile | server | users | req/s | p50 ms | p95 ms | p99 ms | non-2xx | socket errors "
        "| peak DB conns | peak RSS MB | server CPU % | CPU ms/req |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for s in steps:
        non2xx = ", ".join(f"{k}: {v}" for k, v in s.non_2xx.items()) or "0"
        sock = ", ".join(f"{k}: {v}" for k, v in s.socket_errors.items()) or "0"
        if s.requests >= MIN_REQUESTS:
            latency = f"{s.p50_ms:.1f} | {s.p95_ms:.1f} | {s.p99_ms:.1f}"
            per_request = f"{s.cpu_ms_per_request:.1f}"
        else:
            latency = f"{s.requests} responses | - | -"
            per_request = "-"
        db = (
            "all the server allows"
            if s.peak_db_connections == SERVER_FULL
            else s.peak_db_connections
        )
        lines.append(
            f"| {s.profile} | {s.server} | {s.users} | {s.rps:.0f} | {latency} | {non2xx} | "
            f"{sock} | {db} | {f'{s.peak_rss_mb:.0f}' if s.peak_rss_mb else 'not sampled'} | "
            f"{s.server_cpu_percent:.0f} | {per_request} |"
        )
    lines += ["", "## Ratios (freightscale ÷ naive, same run)", ""]
    lines += ["| users | req/s ratio | p95 ratio | DB connections |", "|---:|---:|---:|---|"]
    for users in sorted({s.users for s in steps}):
        pair = {s.profile: s for s in steps if s.users == users and s.server == args.server}
        if {"naive", "freightscale"} <= pair.keys():
            fs, nv = pair["freightscale"], pair["naive"]
            if min(fs.requests, nv.requests) < MIN_REQUESTS:
                lines.append(f"| {users} | n/a (no responses) | n/a | {_db(fs)} vs {_db(nv)} |")
                continue
            lines.append(
                f"| {users} | {fs.rps / max(nv.rps, 0.1):.2f}x | "
                f"{fs.p95_ms / max(nv.p95_ms, 0.001):.2f}x | "
                f"{_db(fs)} vs {_db(nv)} |"
            )
    lines += ["", "## The target", "", *target_lines(steps, args.server)]
    return "\n".join(lines) + "\n"


def _db(step: Step) -> str:
    if step.peak_db_connections == SERVER_FULL:
        return "all the server allows"
    return str(step.peak_db_connections)


def target_lines(steps: list[Step], server: str) -> list[str]:
    fs = sorted((s for s in steps if s.profile == "freightscale" and s.server == server),
                key=lambda s: s.users)  # fmt: skip
    out = []
    at_1000 = next((s for s in fs if s.users == 1000), None)
    if at_1000 is None:
        out.append("- The freightscale profile was not measured at 1000 users in this run.")
    else:
        unintended = {k: v for k, v in at_1000.non_2xx.items() if k != "429"}
        served = at_1000.requests >= MIN_REQUESTS
        checks = [
            ("p95 < 200 ms", served and at_1000.p95_ms < 200,
             f"{at_1000.p95_ms:.1f} ms" if served else "no response completed"),
            ("no errors but intended 429s",
             served and not unintended and not at_1000.socket_errors,
             f"non-2xx {at_1000.non_2xx or 0}, socket {at_1000.socket_errors or 0}"),
            ("< 100 DB connections", at_1000.peak_db_connections < 100,
             str(at_1000.peak_db_connections)),
            ("< 2 GB total RSS", at_1000.peak_rss_mb < 2048, f"{at_1000.peak_rss_mb:.0f} MB"),
        ]  # fmt: skip
        out.append("freightscale profile at 1000 users:")
        out.append("")
        for name, ok, value in checks:
            out.append(f"- {name}: **{'met' if ok else 'NOT met'}** ({value})")
    holding = [
        s.users for s in fs if s.requests >= MIN_REQUESTS and s.p95_ms < 200 and not s.socket_errors
    ]
    out.append("")
    out.append(
        f"- highest user count measured with p95 < 200 ms: **{max(holding)}**"
        if holding
        else "- no measured user count held p95 < 200 ms"
    )
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="100,250,500,1000,2000")
    parser.add_argument("--profiles", default="naive,freightscale")
    parser.add_argument("--server", default="uvicorn",
                        choices=["uvicorn", "uvicorn-asyncio", "granian"])  # fmt: skip
    parser.add_argument("--compare-servers", action="store_true",
                        help="also run the freightscale profile at --compare-users on the "
                             "other servers")  # fmt: skip
    parser.add_argument("--compare-users", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--think-ms", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--shipments", type=int, default=100_000)
    parser.add_argument("--seed-users", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server-cores", default="0")
    parser.add_argument("--load-cores", default="1")
    parser.add_argument("--postgres", choices=["private", "shared"], default="private")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="only re-render the report of an earlier run"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/load/run.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(f"# {command}", flush=True)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        steps_from_file = [Step(**step) for step in saved["steps"]]
        saved_args = parse_args(shlex.split(saved["command"])[2:])
        write_report(steps_from_file, saved_args, saved["command"], args.out)
        return 0
    require_wrk()
    user_steps = [int(u) for u in args.users.split(",") if u]
    profiles = [p for p in args.profiles.split(",") if p]
    postgres = PrivatePostgres() if args.postgres == "private" else SharedPostgresDatabase()
    redis = PrivateRedis()
    work = Path(tempfile.mkdtemp(prefix="fo-bench-"))
    steps: list[Step] = []
    try:
        database_url = postgres.start()
        redis_url = redis.start()
        admin_dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
        started = time.perf_counter()
        counts = seed_database(database_url, args.shipments, args.seed_users)
        print(f"seeded {counts} in {time.perf_counter() - started:.1f}s", flush=True)
        max_users = max([*user_steps, args.compare_users if args.compare_servers else 0])
        runs = [(p, args.server, user_steps) for p in profiles]
        if args.compare_servers:
            others = [s for s in ("uvicorn", "uvicorn-asyncio", "granian") if s != args.server]
            runs += [("freightscale", s, [args.compare_users]) for s in others]
        for profile, server_kind, users_list in runs:
            env = app_env(profile, database_url, redis_url, work / f"sessions-{profile}")
            users_file = work / f"users-{profile}.txt"
            if not users_file.exists():
                mint_users(env, max_users, users_file)
            server = start_server(server_kind, env, args.server_cores, args.workers,
                                  work / f"server-{profile}-{server_kind}.log")  # fmt: skip
            try:
                for users in users_list:
                    steps.append(
                        measure(profile, server_kind, server, users_file, users, args, admin_dsn)
                    )
            finally:
                server.stop()
        results = ROOT / "bench" / "load" / "results"
        results.mkdir(exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        (results / f"{stamp}.json").write_text(
            json.dumps({"command": command, "steps": [asdict(s) for s in steps]}, indent=2)
        )
        for log in work.glob("server-*.log"):
            shutil.copy(log, results / f"{stamp}-{log.name}")
        print("\n" + "\n".join(target_lines(steps, args.server)))
        if not args.no_report:
            write_report(steps, args, command, args.out)
    finally:
        redis.stop()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
