"""A few seconds of the load test, to keep bench/load's scripts working.

Not a benchmark: it asserts only that wrk runs the user model against a real
server, that every request succeeds, and that the runner parses the result.
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.examples.conftest import ROOT, Server


def _runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fo_load_run", ROOT / "bench/load/run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("profile", ["freightscale", "naive"])
def test_load_smoke(
    profile: str,
    all_workers: dict[str, tuple[Server, Server]],
    worker_envs: dict[str, dict[str, str]],
    tmp_path: Path,
) -> None:
    assert shutil.which("wrk"), "wrk is not installed: apt-get install wrk"
    run = _runner()
    users_file = tmp_path / "users.txt"
    run.mint_users(worker_envs[profile], 4, users_file)
    lines = users_file.read_text().splitlines()
    assert len(lines) == 4
    assert all(len(line.split()) == 3 for line in lines)
    load = run.user_load(
        all_workers[profile][0].url, users_file, users=4, duration=2, think_ms=50, threads=2,
        cores="0-1",
    )  # fmt: skip
    assert "wrk -t2 -c4" in shlex.join(load.command())
    result = load.run()
    assert result.requests > 10
    assert sum(result.statuses.values()) == result.requests
    assert set(result.statuses) <= {"200", "201"}, result.statuses
    assert result.latency_us[50] <= result.latency_us[95] <= result.latency_us[99]


def test_report_renders_table_and_target(tmp_path: Path) -> None:
    run = _runner()
    steps = [
        run.Step("naive", "uvicorn", 1000, 30, 9000, 300.0, 900.0, 2500.0, 4000.0, 5000.0,
                 {"200": 8990, "500": 10}, {"timeout": 3}, 180, 120.0, 98.0),
        run.Step("freightscale", "uvicorn", 1000, 30, 29000, 970.0, 20.0, 150.0, 300.0, 900.0,
                 {"200": 28990, "429": 10}, {}, 15, 140.0, 80.0),
    ]  # fmt: skip
    args = run.parse_args(["--users", "1000"])
    text = run.render_report(steps, args, "python bench/load/run.py --users 1000", Path("c.png"))
    assert (
        "| freightscale | uvicorn | 1000 | 970 | 20.0 | 150.0 | 300.0 | 429: 10 | 0 | 15 |" in text
    )
    assert "500: 10" in text
    assert "- p95 < 200 ms: **met** (150.0 ms)" in text
    assert "- < 100 DB connections: **met** (15)" in text
    assert "highest user count measured with p95 < 200 ms: **1000**" in text
    assert "| 1000 | 3.23x | 0.06x | 15 vs 180 |" in text
