"""The Prometheus endpoint and the metric inventory on the observability page."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from freightscale.db.metrics import DbMetrics
from freightscale.exceptions import ConfigurationError
from freightscale.settings import FreightScaleSettings
from freightscale.settings.telemetry import TelemetrySettings
from freightscale.stack import build_stack
from freightscale.telemetry import METRICS, get_counter
from freightscale.telemetry.prometheus import (
    SECONDS_BUCKETS,
    MetricsApp,
    install_prometheus,
    metric_views,
    prometheus_reader,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "freightscale"

_GETTERS = {
    "get_counter",
    "get_histogram",
    "get_up_down_counter",
    "create_counter",
    "create_histogram",
    "create_up_down_counter",
    "create_gauge",
    "create_observable_gauge",
    "create_observable_counter",
    "create_observable_up_down_counter",
}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_metrics", DOCS / "gen_metrics.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metric_names_in_source() -> dict[str, str]:
    """Every "freightscale." metric name passed to a meter / instrument getter in src/.

    A name may be a literal or a module-level string constant (``_DURATION``).
    Returns name -> the file that uses it.
    """
    found: dict[str, str] = {}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, (ast.Assign, ast.AnnAssign))
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name not in _GETTERS:
                continue
            arg = node.args[0]
            value: object = None
            if isinstance(arg, ast.Constant):
                value = arg.value
            elif isinstance(arg, ast.Name):
                value = constants.get(arg.id)
            if isinstance(value, str) and value.startswith("freightscale."):
                found[value] = str(path.relative_to(ROOT))
    return found


def page() -> str:
    return (DOCS / "observability.md").read_text(encoding="utf-8")


def test_inventory_is_generated_and_current() -> None:
    assert load_generator().render() in page(), (
        "the metric inventory in docs/observability.md is out of date: "
        "run `PYTHONPATH=src python docs/gen_metrics.py` and commit it"
    )


def test_every_metric_name_used_in_src_is_in_the_inventory() -> None:
    used = metric_names_in_source()
    # the scan sees the getters: a broken scan must not pass vacuously
    assert "freightscale.http.request.duration" in used  # through the _DURATION constant
    assert "freightscale.loop.lag" in used  # through LAG_METRIC
    assert "freightscale.db.pool.checkout.wait" in used  # DbMetrics, a meter.create_* call
    block = page().split("metrics-inventory:start", 1)[1].split("metrics-inventory:end", 1)[0]
    missing = {name: where for name, where in used.items() if f"`{name}`" not in block}
    assert not missing, f"metrics used in src/ but not listed in docs/observability.md: {missing}"
    inventory = {row[0] for row in load_generator().inventory()}
    assert set(METRICS) <= inventory


def test_dashboard_queries_use_documented_series() -> None:
    text = page()
    dashboard = text.split("### A dashboard", 1)[1]
    block = text.split("metrics-inventory:start", 1)[1].split("metrics-inventory:end", 1)[0]
    series = set(re.findall(r"\b(freightscale_[a-z_]+?)(?:_bucket|_count|_sum)?\b", dashboard))
    assert len(series) >= 6
    for name in series:
        assert name in block, name


def isolated() -> tuple[MeterProvider, CollectorRegistry]:
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[prometheus_reader(registry)], views=metric_views())
    return provider, registry


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://testserver")


async def test_metrics_app_serves_a_registry_in_prometheus_text() -> None:
    provider, registry = isolated()
    spec = METRICS["freightscale.http.request.duration"]
    histogram = provider.get_meter("freightscale").create_histogram(
        spec.name, spec.unit, spec.description
    )
    histogram.record(0.02, {"http.request.method": "GET", "http.response.status_code": 200})
    histogram.record(3.0, {"http.request.method": "GET", "http.response.status_code": 200})
    async with client(MetricsApp(registry)) as http:
        response = await http.get("/")
        head = await http.head("/")
        post = await http.post("/")
    provider.shutdown()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert response.headers["cache-control"] == "no-store"
    body = response.text
    labels = 'http_request_method="GET",http_response_status_code="200"'
    # second-scale buckets: 0.02 s lands in le=0.025, 3 s only from le=5
    assert re.search(
        r'freightscale_http_request_duration_seconds_bucket\{[^}]*le="0\.025"[^}]*\} 1\.0', body
    )
    assert re.search(
        r'freightscale_http_request_duration_seconds_bucket\{[^}]*le="2\.5"[^}]*\} 1\.0', body
    )
    assert re.search(
        r'freightscale_http_request_duration_seconds_bucket\{[^}]*le="5\.0"[^}]*\} 2\.0', body
    )
    assert labels in body
    assert re.search(r"freightscale_http_request_duration_seconds_count\{[^}]*\} 2\.0", body)

    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(response.content)

    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"
    assert post.headers["content-type"].startswith("application/problem+json")


async def test_metrics_app_speaks_openmetrics_when_asked() -> None:
    provider, registry = isolated()
    provider.get_meter("freightscale").create_counter(
        "freightscale.cache.lookups", "{request}"
    ).add(2, {"result": "hit"})
    async with client(MetricsApp(registry)) as http:
        response = await http.get(
            "/", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    provider.shutdown()
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    assert re.search(
        r'freightscale_cache_lookups_total\{[^}]*result="hit"[^}]*\} 2\.0', response.text
    )


async def test_database_gauges_and_counters_reach_the_endpoint() -> None:
    provider, registry = isolated()
    db = DbMetrics.for_provider(provider)
    attrs = {"db.role": "primary", "db.pool.name": "primary"}
    db.record_timeout(attrs)
    db.record_checkout(0.004, attrs)
    db.record_unavailable("primary", "timeout")
    async with client(MetricsApp(registry)) as http:
        body = (await http.get("/")).text
    provider.shutdown()
    assert re.search(
        r'freightscale_db_pool_checkout_timeouts_total\{[^}]*db_pool_name="primary"[^}]*\} 1\.0',
        body,
    )
    assert re.search(
        r'freightscale_db_pool_checkout_wait_seconds_bucket\{[^}]*le="0\.005"[^}]*\} 1\.0', body
    )
    assert re.search(r'freightscale_db_unavailable_total\{[^}]*reason="timeout"[^}]*\} 1\.0', body)


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def stack_settings(**telemetry: Any) -> FreightScaleSettings:
    return FreightScaleSettings(telemetry=telemetry, health={"cache_ttl": 0})


async def test_build_stack_mounts_the_endpoint_outside_the_components() -> None:
    provider, registry = isolated()
    provider.get_meter("freightscale").create_counter("freightscale.ratelimit.decisions").add(
        1, {"rule": "default", "outcome": "limited"}
    )
    app = Starlette(routes=[Route("/", hello), Route("/metrics-not", hello)])
    stack = build_stack(
        app,
        stack_settings(metrics_path="/metrics"),
        meter_provider=provider,
        metrics_registry=registry,
    )
    assert stack.components[:3] == ("telemetry", "metrics", "health")
    async with client(stack) as http:
        metrics = await http.get("/metrics")
        other = await http.get("/metrics-not")
        root = await http.get("/")
    provider.shutdown()
    assert metrics.status_code == 200
    assert "freightscale_ratelimit_decisions_total" in metrics.text
    assert "x-request-id" in metrics.headers  # telemetry stays outside it
    assert other.text == "hello"
    assert root.text == "hello"


async def test_metrics_path_is_off_by_default() -> None:
    stack = build_stack(Starlette(routes=[Route("/", hello)]), stack_settings())
    assert "metrics" not in stack.components
    async with client(stack) as http:
        assert (await http.get("/metrics")).status_code == 404


def test_metrics_path_setting_is_validated() -> None:
    assert TelemetrySettings().metrics_path == ""
    with pytest.raises(ValidationError, match="metrics_path"):
        TelemetrySettings(metrics_path="metrics")
    with pytest.raises(ConfigurationError, match="metrics_path '/healthz'"):
        build_stack(
            Starlette(),
            stack_settings(metrics_path="/healthz"),
            meter_provider=MeterProvider(),
            metrics_registry=CollectorRegistry(),
        )


def test_install_prometheus_returns_the_apps_own_provider() -> None:
    provider = MeterProvider()
    assert install_prometheus(provider) is provider
    assert tuple(sorted(SECONDS_BUCKETS)) == SECONDS_BUCKETS


def test_the_apps_own_provider_gets_freightscales_counters() -> None:
    """A provider that is not the global one still scrapes every freightscale counter."""
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[prometheus_reader(registry)])
    install_prometheus(provider)
    get_counter("freightscale.errors.unhandled").add(1, {"error.type": "Probe"})
    samples = [
        sample
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "freightscale_errors_unhandled_total"
        and sample.labels.get("error_type") == "Probe"
    ]
    total = get_counter("freightscale.errors.unhandled").values()[
        frozenset({("error.type", "Probe")})
    ]
    assert [sample.value for sample in samples] == [total]


_PROBE = textwrap.dedent(
    """
    import asyncio, logging, sys
    import httpx
    from opentelemetry import metrics
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from freightscale.stack import build_stack

    async def hello(request):
        return PlainTextResponse("hello")

    async def crash(request):
        raise RuntimeError("kaput")

    logging.disable(logging.CRITICAL)
    stack = build_stack(Starlette(routes=[Route("/", hello), Route("/crash", crash)]))
    before = type(metrics.get_meter_provider()).__module__

    async def main():
        transport = httpx.ASGITransport(stack, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            for _ in range(3):
                assert (await http.get("/")).status_code == 200
            assert (await http.get("/crash")).status_code == 500
            response = await http.get("/metrics")
        print(before)
        print(response.status_code)
        print(response.text)

    asyncio.run(main())
    """
)


def test_build_stack_installs_a_global_provider_and_serves_real_traffic() -> None:
    """In a subprocess: the global MeterProvider can only be set once per process."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "FREIGHTSCALE_TELEMETRY__METRICS_PATH": "/metrics",
        "FREIGHTSCALE_HEALTH__CACHE_TTL": "0",
    }
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    provider_module, status, body = out.stdout.split("\n", 2)
    assert provider_module.startswith("opentelemetry.sdk.metrics")
    assert status == "200"
    ok = 'http_request_method="GET",http_response_status_code="200"'
    assert re.search(
        r"freightscale_http_request_duration_seconds_count\{" + ok + r"[^}]*\} 3\.0", body
    ), body
    assert re.search(
        r"freightscale_http_request_duration_seconds_bucket\{" + ok + r',le="10\.0"[^}]*\} 3\.0',
        body,
    ), body
    assert 'http_response_status_code="500"' in body
    assert re.search(r'freightscale_errors_unhandled_total\{error_type="RuntimeError"', body), body
