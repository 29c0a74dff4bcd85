"""Request-scoped sessions: one routing ``AsyncSession`` per HTTP request.

The session is created lazily, on the first :func:`get_session` call: a
request whose handler never touches the database (a cache hit below, a
health probe, a static page) costs no session object and no cleanup.
The session is committed just before a successful (< 400) response starts,
so the client never sees a success whose commit failed; it is rolled back
for an error response or an exception, and always closed — also when the
client disconnects or the task is cancelled (the cleanup is shielded).

A pool timeout or a database outage becomes a 503 problem+json with
``Retry-After``, even when a framework already rendered its own 500 for the
exception (such 5xx responses are held back until the app finishes).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from freightscale.context import scope_state
from freightscale.db.database import Database
from freightscale.db.errors import is_unavailable, unavailable_response
from freightscale.db.routing import RoutingAsyncSession, RoutingState
from freightscale.settings.database import DatabaseSettings
from freightscale.stores import Store
from freightscale.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DatabaseSessionMiddleware", "close_session", "get_session", "request_session"]

logger = logging.getLogger("freightscale.db")

SESSION_KEY = "db_session"
_CLEANUP_SECONDS = 10.0
# 5xx bodies held back in case the exception behind them means "503"; a
# larger (streamed) error body is passed on as is.
_MAX_HELD_BYTES = 65_536


def get_session(request_or_scope: Any) -> RoutingAsyncSession:
    """The request's session (pass a Starlette ``Request`` or an ASGI scope).

    Raises:
        RuntimeError: the request did not pass through :class:`DatabaseSessionMiddleware`.
    """
    scope = getattr(request_or_scope, "scope", request_or_scope)
    session = request_session(scope)
    if session is None:
        raise RuntimeError(
            "no database session in this request: wrap the app in "
            "DatabaseSessionMiddleware (or use freightscale.db.fastapi's dependency)"
        )
    return session


def request_session(scope: Scope) -> RoutingAsyncSession | None:
    """The session the middleware (or the FastAPI dependency) gives this request, or None.

    The middleware's session is created here, on first use.
    """
    found = scope_state(scope).get(SESSION_KEY)
    if isinstance(found, _Responder):
        return found.session
    return found if isinstance(found, RoutingAsyncSession) else None


async def close_session(session: RoutingAsyncSession, *, rollback: bool) -> None:
    """Roll back (if asked) and close ``session``, shielded from cancellation.

    Never raises: a connection that cannot be reset is invalidated by the
    pool, so nothing stays checked out.
    """
    with anyio.CancelScope(shield=True) as scope:
        scope.deadline = anyio.current_time() + _CLEANUP_SECONDS
        try:
            if rollback:
                await session.rollback()
        except Exception as exc:
            logger.debug("rollback failed: %r", exc)
        try:
            await session.close()
        except Exception as exc:
            logger.debug("close failed (%r); invalidating the session's connections", exc)
            try:
                await session.invalidate()
            except Exception as inner:
                logger.debug("invalidate failed: %r", inner)


class DatabaseSessionMiddleware:
    """Give each HTTP request one routing session (see the module doc).

    Args:
        app: the ASGI app.
        config: the ``database`` settings (used when ``database`` is not given).
        database: the process's :class:`Database`; share one between the
            middleware and the app's own code.
        store: read-your-writes marker store for a ``Database`` built here.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: DatabaseSettings | None = None,
        *,
        database: Database | None = None,
        store: Store | None = None,
    ) -> None:
        self.app = app
        self.database = database if database is not None else Database(config, store=store)
        self.retry_after = self.database.settings.unavailable_retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _Responder(self, scope).run(receive, send)


class _Responder:
    """Per-request state of :class:`DatabaseSessionMiddleware`."""

    def __init__(self, middleware: DatabaseSessionMiddleware, scope: Scope) -> None:
        self.mw = middleware
        self.db = middleware.database
        self.scope = scope
        self.state = RoutingState()
        self._session: RoutingAsyncSession | None = None
        self.status: int | None = None
        self.forwarded = False  # anything reached the real ``send``
        self.held: list[Message] | None = None
        self.held_bytes = 0

    @property
    def session(self) -> RoutingAsyncSession:
        """The request's session, created on first use."""
        if self._session is None:
            self._session = self.db.session(self.state)
        return self._session

    async def run(self, receive: Receive, send: Send) -> None:
        self.send = send
        db = self.db
        db.start()
        await db.load_marker(self.scope, self.state)
        scope_state(self.scope)[SESSION_KEY] = self  # the session, lazily
        failed = True
        try:
            await self.mw.app(self.scope, receive, self._send)
            failed = False
        except Exception as exc:
            await self._close(rollback=True)
            # A bare ConnectionError only means "database" if the database was used.
            reason = is_unavailable(exc) if self.state.used else None
            if reason is None or self.forwarded:
                await self._flush()
                raise
            db.outage.failure(reason, exc)
            if reason == "unavailable":
                db.recheck_replicas_soon()
            response = unavailable_response(
                reason, retry_after=self.mw.retry_after, instance=self.scope.get("path")
            )
            await response(self.scope, receive, send)
        finally:
            if failed:
                # Cancelled or failed: nothing may stay checked out.
                await self._close(rollback=True)
            else:
                await self._finish()
            scope_state(self.scope).pop(SESSION_KEY, None)

    async def _close(self, *, rollback: bool) -> None:
        if self._session is not None:
            await close_session(self._session, rollback=rollback)

    async def _finish(self) -> None:
        """The app returned: settle work done after the response started, then close."""
        if self._session is None:
            # The handler never asked for the session: nothing to settle or close.
            await self._flush()
            return
        try:
            if self.session.in_transaction():
                if self.status is not None and self.status < 400:
                    await self.session.commit()
                    await self.db.save_marker(self.scope, self.state)
                else:
                    await self.session.rollback()
        except Exception as exc:
            logger.warning("commit after the response failed: %r", exc)
        await close_session(self.session, rollback=False)
        if self.state.used:
            self.db.outage.success()
        await self._flush()

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = status = int(message["status"])
            if self._session is None or not self._session.in_transaction():
                pass  # the handler did not touch the database (or settled it itself)
            elif status < 400:
                # Commit before the client can see success; a failure raises
                # into the app, which unwinds to ``run``.
                await self.session.commit()
            else:
                try:
                    await self.session.rollback()
                except Exception as exc:
                    logger.debug("rollback before an error response failed: %r", exc)
            # Also after an error response: the handler may have committed itself.
            await self.db.save_marker(self.scope, self.state)
            if status >= 500:
                self.held = []
        if self.held is not None:
            self.held.append(message)
            self.held_bytes += len(message.get("body", b""))
            if self.held_bytes > _MAX_HELD_BYTES:
                await self._flush()
            return
        self.forwarded = True
        await self.send(message)

    async def _flush(self) -> None:
        held, self.held = self.held, None
        for message in held or ():
            self.forwarded = True
            await self.send(message)
