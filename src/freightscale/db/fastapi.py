"""FastAPI / Starlette integration: a session dependency and 503 handlers.

::

    from typing import Annotated
    from fastapi import Depends, FastAPI
    from freightscale.db import Database
    from freightscale.db.fastapi import add_exception_handlers, session_dependency

    db = Database(settings.database)
    app = FastAPI(lifespan=lambda app: db.lifespan())
    add_exception_handlers(app)
    Session = Annotated[RoutingAsyncSession, Depends(session_dependency(db), scope="function")]

``scope="function"`` (FastAPI >= 0.121) ends the dependency before the response
is sent, so the commit happens before the client sees success. Inside
:class:`~freightscale.db.DatabaseSessionMiddleware` the dependency returns the
middleware's session instead of opening a second one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import exc as sa_exc
from starlette.requests import Request
from starlette.responses import Response

from freightscale.db.database import Database
from freightscale.db.errors import DatabaseUnavailableError, is_unavailable, unavailable_response
from freightscale.db.middleware import close_session, request_session
from freightscale.db.routing import RoutingAsyncSession, RoutingState

__all__ = ["add_exception_handlers", "session_dependency"]


def session_dependency(
    database: Database,
) -> Callable[[Request], AsyncIterator[RoutingAsyncSession]]:
    """A dependency (with ``yield``) giving the request its routing session.

    Commits when the handler returns, rolls back when it raises, always
    closes; a pool timeout or outage is raised as
    :class:`~freightscale.db.errors.DatabaseUnavailableError` (503 with
    :func:`add_exception_handlers`).
    """

    async def database_session(request: Request) -> AsyncIterator[RoutingAsyncSession]:
        existing = request_session(request.scope)
        if existing is not None:
            yield existing
            return
        database.start()
        state = RoutingState()
        await database.load_marker(request.scope, state)
        session = database.session(state)
        try:
            try:
                yield session
                await session.commit()
            except Exception as exc:
                await close_session(session, rollback=True)
                reason = is_unavailable(exc) if state.used else None
                if reason is None:
                    raise
                database.outage.failure(reason, exc)
                raise DatabaseUnavailableError(
                    str(exc)[:200],
                    reason=reason,
                    retry_after=database.settings.unavailable_retry_after,
                ) from exc
            await database.save_marker(request.scope, state)
            if state.used:
                database.outage.success()
        finally:
            await close_session(session, rollback=True)

    return database_session


def add_exception_handlers(app: Any, *, retry_after: int = 2) -> None:
    """Answer pool timeouts and database outages with a 503 problem+json.

    Works on a Starlette or FastAPI app (``app.add_exception_handler``).
    """

    async def handler(request: Request, exc: Exception) -> Response:
        reason = is_unavailable(exc)
        after = exc.retry_after if isinstance(exc, DatabaseUnavailableError) else retry_after
        if reason is None:
            raise exc
        return unavailable_response(reason, retry_after=after, instance=request.url.path)

    for kind in (DatabaseUnavailableError, sa_exc.TimeoutError, sa_exc.OperationalError):
        app.add_exception_handler(kind, handler)
