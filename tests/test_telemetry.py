"""Request ids, the log filter, spans and metrics of TelemetryMiddleware."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from freightscale.context import get_request_id, scope_state
from freightscale.settings import TelemetrySettings
from freightscale.telemetry import (
    METRICS,
    RequestIdLogFilter,
    RequestIdMiddleware,
    TelemetryMiddleware,
    generate_request_id,
    get_counter,
    get_histogram,
    get_meter,
    get_tracer,
    get_up_down_counter,
)
from freightscale.types import Message, Receive, Scope, Send
from tests.helpers import LifespanDriver, http_scope, request, websocket_session

GENERATED = re.compile(r"[0-9a-f]{32}")


async def echo_id(scope: Scope, receive: Receive, send: Send) -> None:
    """Bare ASGI app answering with the request id it sees (contextvar and scope)."""
    body = f"{get_request_id()}|{scope_state(scope).get('request_id')}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://testserver")


async def test_generates_an_id_when_none_is_sent() -> None:
    response = await request(TelemetryMiddleware(echo_id), http_scope())
    request_id = response.header("x-request-id")
    assert request_id is not None
    assert GENERATED.fullmatch(request_id)
    assert response.body == f"{request_id}|{request_id}".encode()


async def test_generated_ids_differ() -> None:
    assert len({generate_request_id() for _ in range(100)}) == 100


@pytest.mark.parametrize(
    "incoming", ["abc", "a.b_c:d-e", "0" * 128, "7f3c2a9e-1b2c-4d5e-8f90-123456789abc"]
)
async def test_reuses_a_well_formed_incoming_id(incoming: str) -> None:
    scope = http_scope(headers=[(b"x-request-id", incoming.encode())])
    response = await request(TelemetryMiddleware(echo_id), scope)
    assert response.header("x-request-id") == incoming
    assert response.body == f"{incoming}|{incoming}".encode()


@pytest.mark.parametrize(
    "incoming",
    [
        b"0" * 129,  # too long for the default max_request_id_length
        b"abc\x00def",
        b"abc\r\nset-cookie: x=1",
        b"tab\there",
        b"caf\xc3\xa9",  # non-ASCII (UTF-8)
        b"\xff\xfe",
        b"",
        b"with space",
        b"<script>",
    ],
    ids=["too-long", "nul", "crlf", "tab", "utf8", "latin1", "empty", "space", "markup"],
)
async def test_replaces_a_malformed_incoming_id(incoming: bytes) -> None:
    scope = http_scope(headers=[(b"x-request-id", incoming)])
    response = await request(TelemetryMiddleware(echo_id), scope)
    request_id = response.header("x-request-id")
    assert request_id is not None
    assert GENERATED.fullmatch(request_id)
    assert response.body == f"{request_id}|{request_id}".encode()


async def test_length_bound_comes_from_settings() -> None:
    app = TelemetryMiddleware(echo_id, TelemetrySettings(max_request_id_length=8))
    ok = await request(app, http_scope(headers=[(b"x-request-id", b"12345678")]))
    long = await request(app, http_scope(headers=[(b"x-request-id", b"123456789")]))
    assert ok.header("x-request-id") == "12345678"
    assert long.header("x-request-id") != "123456789"


async def test_untrusted_incoming_id_is_always_replaced() -> None:
    app = TelemetryMiddleware(echo_id, TelemetrySettings(trust_incoming_request_id=False))
    response = await request(app, http_scope(headers=[(b"x-request-id", b"abc")]))
    assert GENERATED.fullmatch(response.header("x-request-id") or "")


async def test_custom_header_name() -> None:
    app = TelemetryMiddleware(echo_id, TelemetrySettings(request_id_header="X-Correlation-ID"))
    response = await request(app, http_scope(headers=[(b"x-correlation-id", b"corr-1")]))
    assert response.header("x-correlation-id") == "corr-1"
    assert response.header("x-request-id") is None


async def test_id_is_unbound_after_the_request() -> None:
    await request(TelemetryMiddleware(echo_id), http_scope())
    assert get_request_id() is None


async def test_alias() -> None:
    assert RequestIdMiddleware is TelemetryMiddleware


async def test_log_filter_adds_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("tests.telemetry")
    caplog.handler.addFilter(RequestIdLogFilter())

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        log.warning("inside")
        await PlainTextResponse("ok")(scope, receive, send)

    with caplog.at_level(logging.WARNING, logger="tests.telemetry"):
        await request(TelemetryMiddleware(app), http_scope(headers=[(b"x-request-id", b"r-42")]))
        log.warning("outside")
    ids = [getattr(record, "request_id", None) for record in caplog.records]
    assert ids == ["r-42", "-"]


# ---- frameworks and scope types ------------------------------------------------


async def test_under_starlette() -> None:
    async def handler(request: Request) -> JSONResponse:
        return JSONResponse({"id": get_request_id()})

    app = TelemetryMiddleware(Starlette(routes=[Route("/", handler)]))
    async with client(app) as c:
        response = await c.get("/", headers={"X-Request-ID": "star-1"})
    assert response.json() == {"id": "star-1"}
    assert response.headers["x-request-id"] == "star-1"


async def test_under_fastapi() -> None:
    api = FastAPI()

    @api.get("/")
    async def handler() -> dict[str, str | None]:
        return {"id": get_request_id()}

    async with client(TelemetryMiddleware(api)) as c:
        response = await c.get("/", headers={"X-Request-ID": "fast-1"})
    assert response.json() == {"id": "fast-1"}
    assert response.headers["x-request-id"] == "fast-1"


async def test_lifespan_passes_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            seen.append(message["type"])
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    driver = LifespanDriver(TelemetryMiddleware(app))
    assert await driver.startup() == {"type": "lifespan.startup.complete"}
    assert await driver.shutdown() == {"type": "lifespan.shutdown.complete"}
    assert seen == ["lifespan.startup", "lifespan.shutdown"]


async def test_websocket_passes_through_with_an_id() -> None:
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(get_request_id() or "none")
        await websocket.close()

    app = TelemetryMiddleware(Starlette(routes=[WebSocketRoute("/ws", ws)]))
    sent = await websocket_session(app, "/ws", headers=[(b"x-request-id", b"ws-1")])
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "ws-1"
    assert not any(name == b"x-request-id" for name, _ in sent[0].get("headers", []))


async def test_existing_response_headers_are_kept() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("ok", headers={"x-app": "1"})(scope, receive, send)

    response = await request(TelemetryMiddleware(app), http_scope())
    assert response.header("x-app") == "1"
    assert response.header("x-request-id") is not None


# ---- spans ----------------------------------------------------------------------


def sdk_tracer() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("freightscale"), exporter


async def test_no_sdk_means_no_span() -> None:
    spans: list[trace.Span] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        spans.append(trace.get_current_span())
        await PlainTextResponse("ok")(scope, receive, send)

    middleware = TelemetryMiddleware(app)
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert not middleware._tracing_active(time.perf_counter())
    await request(middleware, http_scope())
    assert not spans[0].get_span_context().is_valid


def test_an_sdk_installed_later_is_noticed_within_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    middleware = TelemetryMiddleware(echo_id)
    assert not middleware._tracing_active(100.0)
    monkeypatch.setattr(trace, "get_tracer_provider", TracerProvider)
    assert not middleware._tracing_active(100.5)  # not looked up again yet
    assert middleware._tracing_active(101.5)
    assert middleware._tracing_active(101.6)


async def test_span_per_request_with_route_status_and_parent() -> None:
    tracer, exporter = sdk_tracer()

    async def item(request: Request) -> JSONResponse:
        current = trace.get_current_span()
        return JSONResponse({"recording": current.is_recording()})

    app = TelemetryMiddleware(Starlette(routes=[Route("/items/{id}", item)]), tracer=tracer)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with client(app) as c:
        response = await c.get(
            "/items/7", headers={"traceparent": parent, "X-Request-ID": "span-1"}
        )
    assert response.json() == {"recording": True}
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /items/{id}"
    assert span.kind == trace.SpanKind.SERVER
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/items/{id}"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["freightscale.request_id"] == "span-1"
    assert format(span.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == "b7ad6b7169203331"


async def test_server_error_marks_the_span() -> None:
    tracer, exporter = sdk_tracer()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("no", status_code=503)(scope, receive, send)

    await request(TelemetryMiddleware(app, tracer=tracer), http_scope())
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR


async def test_exception_is_recorded_and_reraised() -> None:
    tracer, exporter = sdk_tracer()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await request(TelemetryMiddleware(app, tracer=tracer), http_scope())
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


async def test_tracing_off_starts_no_span() -> None:
    tracer, exporter = sdk_tracer()
    app = TelemetryMiddleware(echo_id, TelemetrySettings(tracing=False), tracer=tracer)
    await request(app, http_scope())
    assert exporter.get_finished_spans() == ()


# ---- metrics ----------------------------------------------------------------------


def duration_points(reader: InMemoryMetricReader) -> list[Any]:
    data = reader.get_metrics_data()
    if data is None:  # nothing was ever recorded
        return []
    return [
        point
        for resource in data.resource_metrics
        for scope_metrics in resource.scope_metrics
        for metric in scope_metrics.metrics
        if metric.name == "freightscale.http.request.duration"
        for point in metric.data.data_points
    ]


async def test_duration_histogram_with_bounded_method_label() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("freightscale")
    app = TelemetryMiddleware(echo_id, meter=meter)
    await request(app, http_scope())
    await request(app, http_scope(method="BREW"))
    points = {
        (p.attributes["http.request.method"], p.attributes["http.response.status_code"]): p
        for p in duration_points(reader)
    }
    assert set(points) == {("GET", 200), ("_OTHER", 200)}
    assert points[("GET", 200)].count == 1
    assert points[("GET", 200)].sum > 0


async def test_metrics_off_records_nothing() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("freightscale")
    app = TelemetryMiddleware(echo_id, TelemetrySettings(metrics=False), meter=meter)
    await request(app, http_scope())
    assert duration_points(reader) == []


# ---- the metric registry ------------------------------------------------------------


def test_every_metric_is_namespaced_and_described() -> None:
    assert METRICS, "the registry lists the metrics"
    for name, spec in METRICS.items():
        assert name == spec.name
        assert name.startswith("freightscale."), name
        assert re.fullmatch(r"[a-z0-9_.]+", name), name
        assert spec.kind in ("counter", "up_down_counter", "histogram")
        assert spec.unit
        assert spec.description.endswith(".")
        assert len(set(spec.labels)) == len(spec.labels)


def test_getters_cache_and_check_the_registry() -> None:
    assert get_counter("freightscale.errors.unhandled") is get_counter(
        "freightscale.errors.unhandled"
    )
    assert get_histogram("freightscale.health.check.duration") is get_histogram(
        "freightscale.health.check.duration"
    )
    assert get_up_down_counter("freightscale.db.pool.connections") is not None
    with pytest.raises(KeyError, match="not listed"):
        get_counter("freightscale.no.such.metric")
    with pytest.raises(TypeError, match="histogram"):
        get_counter("freightscale.health.check.duration")
    # No SDK: the totals are kept all the same (an SDK installed later reports them).
    counter = get_counter("freightscale.errors.unhandled")
    before = counter.values().get(frozenset({("error.type", "X")}), 0)
    counter.add(1, {"error.type": "X"})
    assert counter.values()[frozenset({("error.type", "X")})] == before + 1


def test_counter_series_are_shared_running_totals() -> None:
    counter = get_counter("freightscale.compression.bytes")
    tally = counter.series({"encoding": "br", "direction": "in"})
    # Same labels in any order: the same series.
    assert counter.series({"direction": "in", "encoding": "br"}) is tally
    start = tally.value
    tally.value += 5
    tally.add(2)
    counter.add(3, {"direction": "in", "encoding": "br"})
    assert tally.value == start + 10
    observed = {
        tuple(sorted(o.attributes.items())): o.value for o in counter.observe() if o.attributes
    }
    assert observed[(("direction", "in"), ("encoding", "br"))] == start + 10
    assert tally.attributes == {"encoding": "br", "direction": "in"}
    with pytest.raises(TypeError):
        tally.attributes["encoding"] = "gzip"  # type: ignore[index]


def test_meter_and_tracer_are_named_freightscale() -> None:
    assert get_meter() is not None
    tracer = get_tracer()
    assert isinstance(tracer, trace.ProxyTracer)
    with tracer.start_as_current_span("x") as span:
        assert not span.is_recording()


async def test_lifespan_unknown_scope_type_passes_through() -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(dict(scope))

    await TelemetryMiddleware(app)({"type": "custom"}, None, None)  # type: ignore[arg-type]
    assert seen == [{"type": "custom"}]
