"""Auth records the metrics listed in freightscale.telemetry.METRICS."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from freightscale.auth import AuthMiddleware
from freightscale.telemetry import publish_counters
from tests.auth.conftest import bearer, hs_settings, hs_token, make_app
from tests.auth.test_rbac import Loader
from tests.auth.test_verify import get
from tests.helpers import counted, counter_totals


async def test_cache_and_failure_metrics() -> None:
    app = AuthMiddleware(make_app(), hs_settings(require_auth=True), permission_loader=Loader())
    token = hs_token()
    with counted() as seen:
        for _ in range(3):
            assert (await get(app, bearer(token))).status_code == 200
        await get(app, {})  # missing
        await get(app, bearer(hs_token(exp=1)))  # expired
        await get(app, bearer("a.b.c"))  # invalid
        await app.authenticator.revocations.revoke_user("user-1", "acme")
        await get(app, bearer(token))  # revoked
    assert seen[("freightscale.auth.token_cache", (("result", "hit"),))] == 3
    assert seen[("freightscale.auth.token_cache", (("result", "miss"),))] == 3
    assert seen[("freightscale.auth.permission_cache", (("result", "miss"),))] == 1
    assert seen[("freightscale.auth.permission_cache", (("result", "hit"),))] == 2
    for reason in ("missing", "expired", "invalid", "revoked"):
        assert seen[("freightscale.auth.failures", (("reason", reason),))] == 1


async def test_counters_reach_an_sdk_reader() -> None:
    """The counts above are what an OpenTelemetry reader collects."""
    reader = InMemoryMetricReader()
    publish_counters(MeterProvider(metric_readers=[reader]))
    app = AuthMiddleware(make_app(), hs_settings(require_auth=True), permission_loader=Loader())
    token = hs_token()
    for _ in range(3):
        assert (await get(app, bearer(token))).status_code == 200
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        (metric.name, tuple(sorted(point.attributes.items()))): point.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        for point in metric.data.data_points
    }
    assert points == {(name, labels): value for (name, labels), value in counter_totals().items()}
    assert points[("freightscale.auth.token_cache", (("result", "hit"),))] >= 2
