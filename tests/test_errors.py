"""problem+json responses and ErrorMiddleware."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from freightscale.context import bind_request_id
from freightscale.errors import (
    PROBLEM_CONTENT_TYPE,
    ErrorMiddleware,
    exception_handlers,
    problem_response,
)
from freightscale.exceptions import (
    AuthenticationError,
    ConfigurationError,
    FreightScaleError,
    PermissionDenied,
    RateLimitExceeded,
    StoreError,
    StoreUnavailableError,
)
from freightscale.telemetry import TelemetryMiddleware
from freightscale.types import Receive, Scope, Send
from tests.helpers import LifespanDriver, http_scope, request


def raising(exc: BaseException):  # type: ignore[no-untyped-def]
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise exc

    return app


async def test_problem_response_shape() -> None:
    with bind_request_id("rid-1"):
        response = problem_response(
            404, detail="no such shipment", instance="/shipments/9", extra={"code": "missing"}
        )
    assert response.status_code == 404
    assert response.media_type == PROBLEM_CONTENT_TYPE
    assert json.loads(response.body) == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "no such shipment",
        "instance": "/shipments/9",
        "request_id": "rid-1",
        "code": "missing",
    }


async def test_problem_response_minimal_and_unknown_status() -> None:
    body = json.loads(problem_response(599).body)
    assert body == {"type": "about:blank", "title": "Error", "status": 599}


async def test_unhandled_error_is_a_500_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = TelemetryMiddleware(ErrorMiddleware(raising(RuntimeError("secret internals"))))
    with caplog.at_level(logging.ERROR, logger="freightscale.errors"):
        response = await request(app, http_scope("/x", headers=[(b"x-request-id", b"r-500")]))
    assert response.status == 500
    assert response.header("content-type") == PROBLEM_CONTENT_TYPE
    body = json.loads(response.body)
    assert body == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "instance": "/x",
        "request_id": "r-500",
    }
    assert b"secret internals" not in response.body
    # Logged exactly once, with the request id.
    assert len(caplog.records) == 1
    assert "r-500" in caplog.records[0].getMessage()


async def test_debug_shows_the_traceback() -> None:
    app = ErrorMiddleware(raising(RuntimeError("visible")), debug=True)
    body = json.loads((await request(app, http_scope())).body)
    assert body["detail"] == "RuntimeError('visible')"
    assert any("RuntimeError: visible" in line for line in body["traceback"])


@pytest.mark.parametrize(
    ("exc", "status", "retry_after"),
    [
        (AuthenticationError("bad token"), 401, None),
        (PermissionDenied("no"), 403, None),
        (RateLimitExceeded("slow down", retry_after=7.4), 429, "7"),
        (RateLimitExceeded(retry_after=0.1), 429, "1"),
        (StoreError("corrupt"), 503, "1"),
        (StoreUnavailableError("redis down"), 503, "1"),
        (ConfigurationError("bad setting"), 500, None),
        (FreightScaleError("base"), 500, None),
    ],
)
async def test_freightscale_errors_map_to_their_status(
    exc: FreightScaleError, status: int, retry_after: str | None
) -> None:
    response = await request(ErrorMiddleware(raising(exc)), http_scope("/p"))
    assert response.status == status
    assert response.header("retry-after") == retry_after
    body = json.loads(response.body)
    assert body["status"] == status
    assert body["title"] == exc.title
    assert body["detail"] == str(exc)
    assert body["instance"] == "/p"


async def test_cancelled_error_is_not_swallowed() -> None:
    sent: list[object] = []

    async def send(message: object) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request"}

    app = ErrorMiddleware(raising(asyncio.CancelledError()))
    with pytest.raises(asyncio.CancelledError):
        await app(http_scope(), receive, send)
    assert sent == []


async def test_cancellation_of_a_running_request_propagates() -> None:
    started = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(request(ErrorMiddleware(slow), http_scope()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_error_after_the_response_started_sends_nothing_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def half(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("mid-stream")

    with caplog.at_level(logging.ERROR, logger="freightscale.errors"):
        response = await request(ErrorMiddleware(half), http_scope())
    assert response.status == 200
    assert response.body == b"partial"
    assert len(caplog.records) == 1


async def test_non_http_scopes_pass_through() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    driver = LifespanDriver(ErrorMiddleware(app))
    assert (await driver.startup())["type"] == "lifespan.startup.complete"
    assert (await driver.shutdown())["type"] == "lifespan.shutdown.complete"


async def test_under_starlette_and_fastapi() -> None:
    async def denied(request: Request) -> JSONResponse:
        raise PermissionDenied("tenant mismatch")

    api = FastAPI(exception_handlers=exception_handlers())

    @api.get("/denied")
    async def fast_denied() -> None:
        raise PermissionDenied("tenant mismatch")

    starlette = Starlette(
        routes=[Route("/denied", denied)], exception_handlers=exception_handlers()
    )
    for inner in (starlette, api):
        transport = httpx.ASGITransport(ErrorMiddleware(inner))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/denied")
        assert response.status_code == 403
        assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
        assert response.json()["detail"] == "tenant mismatch"


async def test_successful_responses_are_untouched() -> None:
    response = await request(ErrorMiddleware(PlainTextResponse("fine")), http_scope())
    assert response.status == 200
    assert response.body == b"fine"


async def test_starlette_crash_becomes_a_problem_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def crash(request: Request) -> JSONResponse:
        raise RuntimeError("internal detail")

    inner = Starlette(routes=[Route("/crash", crash)], exception_handlers=exception_handlers())
    app = TelemetryMiddleware(ErrorMiddleware(inner))
    with caplog.at_level(logging.ERROR, logger="freightscale.errors"):
        response = await request(app, http_scope("/crash", headers=[(b"x-request-id", b"c-1")]))
    assert response.status == 500
    assert response.header("content-type") == PROBLEM_CONTENT_TYPE
    assert json.loads(response.body)["request_id"] == "c-1"
    assert b"internal detail" not in response.body
    assert len(caplog.records) == 1


async def test_starlette_without_handlers_answers_its_own_plain_500() -> None:
    """Why exception_handlers() exists: Starlette answers before we can."""

    async def denied(request: Request) -> JSONResponse:
        raise PermissionDenied("tenant mismatch")

    app = ErrorMiddleware(Starlette(routes=[Route("/denied", denied)]))
    response = await request(app, http_scope("/denied"))
    assert response.status == 500
    assert response.header("content-type") != PROBLEM_CONTENT_TYPE


async def test_unhandled_errors_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    import freightscale.errors as errors_module

    reader = InMemoryMetricReader()
    counter = MeterProvider(metric_readers=[reader]).get_meter("t").create_counter("c")
    monkeypatch.setattr(errors_module, "_unhandled", lambda: counter)
    await request(ErrorMiddleware(raising(KeyError("k"))), http_scope())
    await request(ErrorMiddleware(raising(PermissionDenied())), http_scope())  # not counted
    data = reader.get_metrics_data()
    assert data is not None
    points = [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        for point in metric.data.data_points
    ]
    assert [(p.attributes["error.type"], p.value) for p in points] == [("KeyError", 1)]
