"""Throwaway PostgreSQL servers: a primary and a streaming replica on free ports.

Started from the installed binaries as the ``postgres`` user in temporary
directories, so tests may stop, restart and pause them without touching the
shared server on 127.0.0.1:5432. Also used by ``bench/db_bench.py --own-server``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path(os.environ.get("FREIGHTSCALE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"

_FAST_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
max_connections = {max_connections}
shared_buffers = 16MB
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = replica
max_wal_senders = 4
hot_standby = on
wal_receiver_status_interval = 1s
max_standby_streaming_delay = 5s
logging_collector = off
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_postgres(*argv: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL binary as the ``postgres`` user (we may be root)."""
    cmd = [str(a) for a in argv]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", PG_USER, "--", *cmd]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def _owned_tempdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, PG_USER, PG_USER)
    return path


@dataclass
class PgServer:
    """One throwaway PostgreSQL server (primary or standby)."""

    datadir: Path
    port: int
    log: Path
    running: bool = False

    @property
    def url(self) -> str:
        """SQLAlchemy URL of its ``postgres`` database."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        """asyncpg DSN of its ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        _as_postgres(
            PG_BIN / "pg_ctl", "-D", self.datadir, "-l", self.log, "-w", "-t", "60", "start"
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop it (``immediate`` simulates a crash)."""
        if self.running:
            _as_postgres(PG_BIN / "pg_ctl", "-D", self.datadir, "-m", mode, "-w", "stop")
            self.running = False

    def restart(self) -> None:
        """Stop fast and start again."""
        self.stop("fast")
        self.start()


@dataclass
class PgCluster:
    """A primary with one streaming replica, all in one temp directory."""

    root: Path
    primary: PgServer
    replica: PgServer | None = None
    extra: list[Path] = field(default_factory=list)

    @classmethod
    def start(cls, *, replica: bool = True, max_connections: int = 60) -> PgCluster:
        """initdb a primary, ``pg_basebackup -R`` a replica, start both."""
        root = _owned_tempdir("fs-pg-")
        sockets = root / "sock"
        sockets.mkdir()
        if os.geteuid() == 0:
            shutil.chown(sockets, PG_USER, PG_USER)
        pdir = root / "primary"
        primary = PgServer(pdir, free_port(), root / "primary.log")
        cluster = cls(root=root, primary=primary)
        try:
            _as_postgres(
                PG_BIN / "initdb", "-D", pdir, "-U", PG_USER, "--auth=trust",
                "-E", "UTF8", "--no-sync", "--no-instructions",
            )  # fmt: skip
            conf = _FAST_CONF.format(
                port=primary.port, sockets=sockets, max_connections=max_connections
            )
            _append_as_postgres(pdir / "postgresql.conf", conf)
            _append_as_postgres(
                pdir / "pg_hba.conf",
                "\nhost replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n",
            )
            primary.start()
            if replica:
                rdir = root / "replica"
                standby = PgServer(rdir, free_port(), root / "replica.log")
                _as_postgres(
                    PG_BIN / "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port),
                    "-U", PG_USER, "-D", rdir, "-R", "-X", "stream", "--checkpoint=fast",
                    "--no-sync",
                )  # fmt: skip
                _append_as_postgres(rdir / "postgresql.conf", f"\nport = {standby.port}\n")
                cluster.replica = standby
                standby.start()
                cluster.wait_streaming()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def wait_streaming(self, timeout: float = 30) -> None:
        """Wait until the primary reports the replica as streaming."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = _as_postgres(
                PG_BIN / "psql", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", PG_USER,
                "-d", "postgres", "-Atc", "SELECT count(*) FROM pg_stat_replication "
                "WHERE state = 'streaming'",
            ).stdout.strip()  # fmt: skip
            if out not in ("", "0"):
                return
            time.sleep(0.1)
        raise RuntimeError("the replica did not start streaming in time")

    def destroy(self) -> None:
        """Stop both servers (immediately) and remove every file."""
        for server in (self.replica, self.primary):
            if server is not None and server.running:
                with contextlib.suppress(Exception):
                    server.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _append_as_postgres(path: Path, text: str) -> None:
    # The files belong to postgres; root may append, ownership is unchanged.
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)
