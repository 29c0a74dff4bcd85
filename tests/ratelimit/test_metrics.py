"""Metrics: decisions by rule and outcome, storage errors and outages (bounded labels)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_metrics_are_labelled_by_rule_never_by_key() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    out = subprocess.run(
        [sys.executable, "-m", "tests.ratelimit.metrics_probe", dead],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    points = {
        (name, json.dumps(attrs, sort_keys=True)): value for name, attrs, value in json.loads(out)
    }
    decisions = "freightscale.ratelimit.decisions"
    assert points[(decisions, '{"outcome": "allowed", "rule": "default"}')] == 2
    assert points[(decisions, '{"outcome": "limited", "rule": "default"}')] == 1
    assert points[(decisions, '{"outcome": "allowed", "rule": "beta"}')] == 1
    assert points[(decisions, '{"outcome": "shadow_limited", "rule": "beta"}')] == 1
    # one outage; the failed call is counted, then requests skip Redis until retry_interval
    outage = '{"component": "ratelimit", "service": "redis"}'
    assert points[("freightscale.backend.outages", outage)] == 1
    error = '{"operation": "ratelimit:default", "store": "redis"}'
    assert points[("freightscale.store.errors", error)] == 1
    # every request was served by the fail-open policy
    fallback = '{"component": "ratelimit", "policy": "open"}'
    assert points[("freightscale.backend.fallbacks", fallback)] == 5
    assert "192.0.2.1" not in out  # no label carries the key
