"""The outermost middleware: request id, a server span and the duration metric."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from freightscale.context import _request_id, bind_request_id, get_request_id, scope_state
from freightscale.settings.telemetry import TelemetrySettings
from freightscale.telemetry.instruments import METRICS, get_histogram, get_tracer
from freightscale.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestIdLogFilter", "TelemetryMiddleware", "generate_request_id"]

_DURATION = "freightscale.http.request.duration"
# How often to look again for an SDK tracer provider while there is none.
_PROVIDER_RECHECK = 1.0
# Method label values are bounded (a client can send any token as a method).
_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)


_randbits = random.getrandbits


def generate_request_id() -> str:
    """Return a fresh request id: 32 random hex characters (as long as a uuid4's hex).

    Ids correlate logs; they are not secrets, so the fast non-cryptographic
    generator (reseeded in every forked worker) is enough.
    """
    return _randbits(128).to_bytes(16).hex()


class RequestIdLogFilter(logging.Filter):
    """Add ``record.request_id`` (the current request id, or ``-``) to every log record.

    Attach it to a handler so every record that handler formats has the field::

        handler.addFilter(RequestIdLogFilter())
        handler.setFormatter(logging.Formatter("%(request_id)s %(levelname)s %(message)s"))
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Set ``record.request_id``; never drops a record."""
        record.request_id = get_request_id() or "-"
        return True


class TelemetryMiddleware:
    """Give every request an id, a server span and a duration sample.

    A well-formed incoming request id (``settings.request_id_header``, at
    most ``max_request_id_length`` characters of ``[A-Za-z0-9._:-]``) is
    reused; anything else (too long, control characters, non-ASCII, empty)
    is replaced by :func:`generate_request_id`. The id is bound for the
    request (:func:`freightscale.get_request_id`, ``scope["freightscale"]``,
    :class:`RequestIdLogFilter`) and returned in the response header.

    Spans and metrics go through ``opentelemetry-api``. With no SDK tracer
    provider installed the span is skipped entirely, so the middleware costs
    a header lookup and a contextvar.

    Args:
        app: the ASGI app to wrap.
        settings: the telemetry section (defaults when omitted).
        tracer: a tracer to use instead of the global ``freightscale`` one;
            when given, spans are always started with it.
        meter: a meter to record the duration histogram on instead of the global one.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: TelemetrySettings | None = None,
        *,
        tracer: trace.Tracer | None = None,
        meter: metrics.Meter | None = None,
    ) -> None:
        self.app = app
        self.settings = settings = settings or TelemetrySettings()
        self._header = settings.request_id_header.lower().encode("latin-1")
        self._trust = settings.trust_incoming_request_id
        self._valid: Callable[[bytes], Any] = re.compile(
            rb"[A-Za-z0-9._:\-]{1,%d}" % settings.max_request_id_length
        ).fullmatch
        self._tracing = settings.tracing
        self._own_tracer = tracer is not None
        self._tracer = tracer or get_tracer()
        self._sdk_seen = False
        self._next_provider_check = 0.0
        self._duration: metrics.Histogram | None = None
        if settings.metrics:
            if meter is None:
                self._duration = get_histogram(_DURATION)
            else:
                spec = METRICS[_DURATION]
                self._duration = meter.create_histogram(spec.name, spec.unit, spec.description)

    def _incoming_id(self, scope: Scope) -> str | None:
        if not self._trust:
            return None
        for name, value in scope.get("headers", ()):
            if name == self._header:
                if self._valid(value):
                    return str(value.decode("ascii"))
                return None
        return None

    def _tracing_active(self, now: float) -> bool:
        if not self._tracing:
            return False
        if self._own_tracer or self._sdk_seen:
            return True
        # Without an SDK the API's provider is a proxy: skip the span entirely.
        # Looking that up costs more than the rest of the middleware, so it is
        # done at most once a second (an SDK installed later is seen within 1 s).
        if now < self._next_provider_check:
            return False
        self._next_provider_check = now + _PROVIDER_RECHECK
        self._sdk_seen = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        return self._sdk_seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http":
            if scope_type == "websocket":
                with bind_request_id(self._incoming_id(scope) or generate_request_id(), scope):
                    await self.app(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return

        request_id = self._incoming_id(scope) or generate_request_id()
        header = (self._header, request_id.encode("ascii"))
        status = 0
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        # What bind_request_id() does, without a generator on the hot path.
        scope_state(scope)["request_id"] = request_id
        token = _request_id.set(request_id)
        try:
            if self._tracing_active(start):
                await self._traced(scope, receive, send_with_id, lambda: status)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)
            if self._duration is not None:
                method = scope.get("method", "GET")
                self._duration.record(
                    time.perf_counter() - start,
                    {
                        "http.request.method": method if method in _METHODS else "_OTHER",
                        "http.response.status_code": status,
                    },
                )

    async def _traced(
        self, scope: Scope, receive: Receive, send: Send, status: Callable[[], int]
    ) -> None:
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", ())
        }
        method = scope.get("method", "GET")
        method = method if method in _METHODS else "_OTHER"
        span = self._tracer.start_span(
            method,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope.get("path", ""),
                "url.scheme": scope.get("scheme", "http"),
                "freightscale.request_id": get_request_id() or "",
            },
        )
        with trace.use_span(span, end_on_exit=True):
            try:
                await self.app(scope, receive, send)
            finally:
                code = status()
                if code:
                    span.set_attribute("http.response.status_code", code)
                    if code >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                route = getattr(scope.get("route"), "path", None)
                if isinstance(route, str):
                    span.set_attribute("http.route", route)
                    span.update_name(f"{method} {route}")
