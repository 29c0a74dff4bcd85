"""Server-side sessions: an opaque signed cookie, data in Redis / PostgreSQL / memory.

::

    from freightscale.sessions import SessionMiddleware, load_session

    app = SessionMiddleware(app, SessionSettings(secret_keys=[...], store_url="redis://…"))

    async def profile(request):
        session = await load_session(request)   # the only store round trip
        session["seen"] = session.get("seen", 0) + 1

See ``docs/sessions.md`` for lazy loading, concurrency, outages and the
legacy file-store migration.
"""

from __future__ import annotations

from freightscale.sessions.backends import (
    CasResult,
    CorruptSessionError,
    MemorySessionBackend,
    SessionBackend,
    SessionRecord,
)
from freightscale.sessions.config import backend_from_settings, backend_from_url
from freightscale.sessions.middleware import SessionMiddleware
from freightscale.sessions.session import (
    Session,
    SessionNotLoadedError,
    SessionTooLargeError,
    SessionUnavailableError,
    load_session,
    merge_changes,
)

__all__ = [
    "CasResult",
    "CorruptSessionError",
    "MemorySessionBackend",
    "Session",
    "SessionBackend",
    "SessionMiddleware",
    "SessionNotLoadedError",
    "SessionRecord",
    "SessionTooLargeError",
    "SessionUnavailableError",
    "backend_from_settings",
    "backend_from_url",
    "load_session",
    "merge_changes",
]
