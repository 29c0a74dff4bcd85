"""Auth records the metrics listed in freightscale.telemetry.METRICS."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import freightscale.auth.middleware as middleware_module
import freightscale.auth.rbac as rbac_module
import freightscale.auth.service as service_module
from freightscale.auth import AuthMiddleware
from freightscale.telemetry import METRICS
from tests.auth.conftest import bearer, hs_settings, hs_token, make_app
from tests.auth.test_rbac import Loader
from tests.auth.test_verify import get


async def test_cache_and_failure_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    counters: dict[str, Any] = {}

    def get_counter(name: str) -> Any:
        assert name in METRICS
        return counters.setdefault(name, meter.create_counter(name))

    for module in (middleware_module, rbac_module, service_module):
        monkeypatch.setattr(module, "get_counter", get_counter)

    app = AuthMiddleware(make_app(), hs_settings(require_auth=True), permission_loader=Loader())
    token = hs_token()
    for _ in range(3):
        assert (await get(app, bearer(token))).status_code == 200
    await get(app, {})  # missing
    await get(app, bearer(hs_token(exp=1)))  # expired
    await get(app, bearer("a.b.c"))  # invalid
    await app.authenticator.revocations.revoke_user("user-1", "acme")
    await get(app, bearer(token))  # revoked

    data = reader.get_metrics_data()
    assert data is not None
    seen: dict[tuple[str, tuple[tuple[str, Any], ...]], int] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    seen[(metric.name, tuple(sorted(point.attributes.items())))] = point.value
    assert seen[("freightscale.auth.token_cache", (("result", "hit"),))] == 3
    assert seen[("freightscale.auth.token_cache", (("result", "miss"),))] == 3
    assert seen[("freightscale.auth.permission_cache", (("result", "miss"),))] == 1
    assert seen[("freightscale.auth.permission_cache", (("result", "hit"),))] == 2
    for reason in ("missing", "expired", "invalid", "revoked"):
        assert seen[("freightscale.auth.failures", (("reason", reason),))] == 1
