"""The FreightOps example serves its metrics at /metrics when the setting asks for it."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from tests.examples.conftest import Server
from tests.examples.test_freightops_e2e import bearer, login


async def test_example_exports_prometheus_metrics_at_metrics_path(
    worker_envs: dict[str, dict[str, str]], server_factory: Callable[..., list[Server]]
) -> None:
    env = {**worker_envs["freightscale"], "FREIGHTSCALE_TELEMETRY__METRICS_PATH": "/metrics"}
    (server,) = server_factory(env)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        token = await login(client, "dispatcher@acme.example")
        for _ in range(3):
            assert (await client.get("/api/shipments", headers=bearer(token))).status_code == 200
    # a client without the session cookie: no credentials at all
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        assert (await client.get("/api/shipments")).status_code == 401
        response = await client.get("/metrics")
        post = await client.post("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    body = response.text
    ok = 'http_request_method="GET",http_response_status_code="200"'
    count = re.search(
        r"freightscale_http_request_duration_seconds_count\{" + ok + r"[^}]*\} (\d+)\.0", body
    )
    assert count, body[:2000]
    assert int(count.group(1)) >= 3
    assert re.search(r'freightscale_http_request_duration_seconds_bucket\{[^}]*le="0\.1"', body)
    assert 'http_response_status_code="401"' in body
    # the database layer's own instruments (the stack owns the engines in this profile)
    assert re.search(r'freightscale_db_pool_connections_idle\{[^}]*db_pool_name="primary"', body)
    # not behind authentication, and read-only
    assert post.status_code == 405
