"""RFC 9457 problem+json responses and the outermost error middleware.

Every component answers bad input with :func:`problem_response`, so clients
see one error shape everywhere::

    {"type": "about:blank", "title": "Too Many Requests", "status": 429,
     "detail": "…", "instance": "/shipments", "request_id": "…"}
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from freightscale.context import get_request_id, scope_state
from freightscale.exceptions import FreightScaleError, RateLimitExceeded
from freightscale.responses import json_dumps
from freightscale.telemetry import get_counter
from freightscale.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from freightscale.telemetry import Counter

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "ErrorMiddleware",
    "ProblemResponse",
    "exception_handlers",
    "problem_response",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"

logger = logging.getLogger("freightscale.errors")


class ProblemResponse(Response):
    """A ``application/problem+json`` response (RFC 9457)."""

    media_type = PROBLEM_CONTENT_TYPE

    def render(self, content: Any) -> bytes:
        return json_dumps(content)


def problem_response(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    type: str = "about:blank",
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ProblemResponse:
    """Build a problem+json response.

    Args:
        status: the HTTP status code.
        title: short summary; defaults to the status phrase.
        detail: explanation specific to this occurrence.
        type: URI identifying the problem type.
        instance: URI of this occurrence (usually the request path).
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
        extra: extension members added to the body.
    """
    body: dict[str, Any] = {
        "type": type,
        "title": title or _phrase(status),
        "status": status,
    }
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    request_id = get_request_id()
    if request_id is not None:
        body["request_id"] = request_id
    if extra:
        body.update(extra)
    return ProblemResponse(body, status_code=status, headers=dict(headers or {}))


def problem_for_exception(exc: FreightScaleError, scope: Scope) -> ProblemResponse:
    """Map a freightscale exception to its problem response."""
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimitExceeded):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if exc.status_code == 503:
        headers.setdefault("Retry-After", "1")
    return problem_response(
        exc.status_code,
        title=exc.title,
        detail=str(exc) or None,
        instance=scope.get("path"),
        headers=headers,
    )


def _unhandled() -> Counter:
    return get_counter("freightscale.errors.unhandled")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class ErrorMiddleware:
    """Turn unhandled exceptions into problem+json responses.

    A :class:`~freightscale.exceptions.FreightScaleError` becomes its own
    status (401, 403, 429, 503…); anything else becomes a 500 that shows the
    traceback only when ``debug`` is true. Each failure is logged once, with
    the request id. ``asyncio.CancelledError`` is never swallowed. If the
    response had already started, the error is logged and the connection is
    left for the server to close.
    """

    def __init__(self, app: ASGIApp, *, debug: bool = False) -> None:
        self.app = app
        self.debug = debug

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            raise
        except FreightScaleError as exc:
            if exc.status_code >= 500:
                logger.warning("request %s failed: %r", get_request_id(), exc)
            if not started:
                await problem_for_exception(exc, scope)(scope, receive, send)
        except Exception as exc:
            logger.exception("unhandled error in request %s", get_request_id())
            _unhandled().add(1, {"error.type": type(exc).__qualname__})
            scope_state(scope)["error"] = exc
            if started:
                return
            detail = None
            extra = None
            if self.debug:
                detail = repr(exc)
                extra = {"traceback": traceback.format_exception(exc)}
            response = problem_response(500, detail=detail, instance=scope.get("path"), extra=extra)
            await response(scope, receive, send)


async def _handle_freightscale_error(request: Any, exc: Exception) -> Response:
    assert isinstance(exc, FreightScaleError)
    if exc.status_code >= 500:
        logger.warning("request %s failed: %r", get_request_id(), exc)
    return problem_for_exception(exc, request.scope)


async def _handle_unexpected_error(request: Any, exc: Exception) -> Response:
    # Starlette's ServerErrorMiddleware sends this, then re-raises, and
    # ErrorMiddleware (outside the app) logs the exception once.
    return problem_response(500, instance=request.scope.get("path"))


def exception_handlers() -> dict[Any, Any]:
    """Return Starlette/FastAPI exception handlers that answer with problem+json.

    Starlette turns every exception into its own plain-text 500 *inside* the
    app, before an outer :class:`ErrorMiddleware` can see it. Pass these
    (``Starlette(exception_handlers=exception_handlers())``), or let
    ``build_stack`` install them, so a ``PermissionDenied`` becomes a 403
    problem and a crash a 500 problem there too.
    """
    return {FreightScaleError: _handle_freightscale_error, Exception: _handle_unexpected_error}
