"""wrk for every benchmark script: pin it, build its command, run it, read its result.

One convention everywhere: the server(s) under test run on core ``SERVER_CORE``
and wrk on core ``WRK_CORE`` (``taskset``, when it exists and the machine has
two cores or more), so the load generator never competes with the server for
a core.

wrk always runs with a Lua reporter (``bench/report.lua`` unless the caller
brings its own, like ``bench/load/freightops.lua``) whose ``done()`` prints one
``BENCH_RESULT {json}`` line: the exact request count, run time in
microseconds, errors by kind and latency percentiles, instead of wrk's rounded,
unit-formatted text summary. Requests/s is the count over that run time, the
same figure wrk prints as "Requests/sec".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "REPORT_LUA",
    "RESULT_PREFIX",
    "SERVER_CORE",
    "WRK_CORE",
    "SocketErrors",
    "Wrk",
    "WrkError",
    "WrkResult",
    "can_pin",
    "cpu_seconds",
    "parse",
    "pin_server",
    "pinned",
    "require_wrk",
]

SERVER_CORE = 0
"""The core the server(s) under test are pinned to."""
WRK_CORE = 1
"""The core wrk is pinned to."""
REPORT_LUA = Path(__file__).resolve().with_name("report.lua")
"""The default reporter: prints the result line and nothing else."""
RESULT_PREFIX = "BENCH_RESULT "
"""What a reporter's ``done()`` puts before its JSON result."""
RUN_MARGIN = 120.0
"""Seconds wrk may take beyond its duration before it counts as hung."""
_PERCENTILE_KEY = re.compile(r"p(\d+)_us")


class WrkError(RuntimeError):
    """wrk failed, printed no result, or saw errors the caller does not accept."""


def require_wrk() -> None:
    """Exit with an install hint when wrk is not on ``PATH``."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")


def can_pin() -> bool:
    """Whether pinning means anything here: ``taskset`` exists and there are two cores."""
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cores: int | str | None, command: Sequence[str]) -> list[str]:
    """``command`` run on ``cores`` (a core or a taskset list like ``"0-1"``) when it can be.

    ``None``, or a machine where :func:`can_pin` is false, leaves the command as is.
    """
    if cores is None or not can_pin():
        return list(command)
    return ["taskset", "-c", str(cores), *command]


def pin_server(command: Sequence[str]) -> list[str]:
    """``command`` (a server under test) pinned to ``SERVER_CORE``."""
    return pinned(SERVER_CORE, command)


def cpu_seconds(*pids: int) -> float:
    """User + system CPU time the processes ``pids`` used so far (Linux ``/proc``).

    A process that has already exited counts as zero.
    """
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class SocketErrors:
    """wrk's socket-level errors of one run, by kind."""

    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0

    @property
    def total(self) -> int:
        """All socket errors together."""
        return self.connect + self.read + self.write + self.timeout

    def nonzero(self) -> dict[str, int]:
        """The kinds that occurred, with their counts (empty when none did)."""
        return {kind: n for kind, n in asdict(self).items() if n}


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    requests: int
    """Completed requests."""
    seconds: float
    """wrk's own measured run time."""
    non_2xx: int
    """Responses with a status of 400 or more (wrk's "Non-2xx or 3xx responses")."""
    socket_errors: SocketErrors
    latency_us: Mapping[int, float]
    """Latency percentiles in microseconds, by percentile (50, 90, 99, ...)."""
    max_latency_us: float
    statuses: Mapping[str, int] = field(default_factory=dict)
    """Responses by status code, when the reporter counts them (``freightops.lua``)."""
    output: str = field(default="", repr=False)
    """wrk's whole stdout."""

    @property
    def rps(self) -> float:
        """Requests per second of wrk's run time (wrk's "Requests/sec")."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> int:
        """Error statuses and socket errors together."""
        return self.non_2xx + self.socket_errors.total

    def check(self, *, socket_errors: bool = True) -> WrkResult:
        """Return this result, or raise :class:`WrkError` if it saw error statuses.

        Args:
            socket_errors: also refuse a run with socket errors.
        """
        if self.non_2xx or (socket_errors and self.socket_errors.total):
            raise WrkError(f"wrk saw errors:\n{self.output}")
        return self


def parse(output: str) -> WrkResult:
    """The result a reporter printed in wrk's ``output``.

    Raises:
        WrkError: no ``BENCH_RESULT`` line in ``output``.
    """
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            return _from_report(json.loads(line.removeprefix(RESULT_PREFIX)), output)
    raise WrkError(f"wrk printed no result:\n{output}")


def _from_report(report: dict[str, Any], output: str) -> WrkResult:
    """A :class:`WrkResult` from a reporter's JSON (see ``report.lua`` for its keys)."""
    errors = report["errors"]
    percentiles: dict[int, float] = {}
    for key, value in report.items():
        if match := _PERCENTILE_KEY.fullmatch(key):
            percentiles[int(match.group(1))] = float(value)
    return WrkResult(
        requests=int(report["requests"]),
        seconds=report["duration_us"] / 1e6,
        non_2xx=int(errors["status"]),
        socket_errors=SocketErrors(
            errors["connect"], errors["read"], errors["write"], errors["timeout"]
        ),
        latency_us=percentiles,
        max_latency_us=float(report["max_us"]),
        statuses={str(k): int(v) for k, v in report.get("statuses", {}).items()},
        output=output,
    )


def _whole_seconds(seconds: float) -> str:
    """A wrk time argument: wrk takes whole seconds only (at least one)."""
    return f"{max(1, round(seconds))}s"


@dataclass(frozen=True)
class Wrk:
    """One wrk run: what it loads, how hard, for how long, and on which core.

    ``Wrk(url, connections=64, duration=3).run()`` loads ``url`` for three
    seconds from core ``WRK_CORE``; :func:`dataclasses.replace` gives variants
    (another URL, a warm-up duration) of the same run.
    """

    url: str
    connections: int
    duration: float
    """Seconds; wrk takes whole seconds, so this is rounded (at least 1)."""
    threads: int = 1
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra request headers (``-H``)."""
    script: Path = REPORT_LUA
    """The Lua script; it must print the ``BENCH_RESULT`` line (see ``report.lua``)."""
    script_args: Sequence[str] = ()
    """Arguments after ``--``, for the script's ``init()``."""
    latency: bool = False
    """Also print wrk's latency distribution (``--latency``) in the output."""
    timeout: float | None = None
    """wrk's per-request timeout in seconds (``--timeout``); wrk's default when None."""
    core: int | str | None = WRK_CORE
    """The core(s) to pin wrk to; None for no pinning."""

    def command(self) -> list[str]:
        """The command line, pinned as :func:`pinned` decides."""
        command = [
            "wrk", f"-t{self.threads}", f"-c{self.connections}",
            f"-d{_whole_seconds(self.duration)}",
        ]  # fmt: skip
        if self.timeout is not None:
            command += ["--timeout", _whole_seconds(self.timeout)]
        if self.latency:
            command.append("--latency")
        for name, value in self.headers.items():
            command += ["-H", f"{name}: {value}"]
        command += ["-s", str(self.script), self.url]
        if self.script_args:
            command += ["--", *self.script_args]
        return pinned(self.core, command)

    def run(self) -> WrkResult:
        """Run wrk and return what it measured.

        Raises:
            WrkError: wrk failed, hung, or printed no result.
        """
        try:
            done = subprocess.run(
                self.command(),
                capture_output=True,
                text=True,
                timeout=self.duration + RUN_MARGIN,
            )
        except subprocess.TimeoutExpired as exc:
            raise WrkError(f"wrk did not finish: {exc}") from None
        if done.returncode != 0:
            raise WrkError(f"wrk exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return parse(done.stdout)
