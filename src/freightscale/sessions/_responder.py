"""The per-request half of :class:`~freightscale.sessions.middleware.SessionMiddleware`.

Per request: the cookie is verified without any store call; the store is
read only when the handler loads the session (or the route is eager); the
response start is held until the session is written back (see
:mod:`freightscale.sessions._commit`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from freightscale.context import scope_state
from freightscale.errors import problem_response
from freightscale.exceptions import StoreError
from freightscale.sessions._commit import _Commit
from freightscale.sessions._common import (
    _HITS,
    _MISSES,
    LEGACY_PREFIX,
    Header,
    _fallbacks,
    _loads,
)
from freightscale.sessions.backends import CorruptSessionError
from freightscale.sessions.cookies import read_cookie, verify_legacy_cookie
from freightscale.sessions.session import Session, SessionTooLargeError, SessionUnavailableError
from freightscale.types import Message, Receive, Scope, Send

if TYPE_CHECKING:
    from freightscale.sessions.middleware import SessionMiddleware

# A stand-in response start that makes the send wrapper answer 503 problem+json.
_FAILED_START: Message = {"type": "http.response.start", "status": 503, "headers": []}
_UNAVAILABLE = "the session store is unavailable; try again shortly"


class _Responder(_Commit):
    """Per-request state: what the cookies said and what must be written back."""

    __slots__ = (
        "cookie_bad", "legacy_present", "legacy_sid", "migrate", "mw", "scope", "session", "sid",
        "unavailable", "unknown",
    )  # fmt: skip

    def __init__(self, mw: SessionMiddleware, scope: Scope) -> None:
        self.mw = mw
        self.scope = scope
        headers = scope.get("headers") or []
        raw = read_cookie(headers, mw._cookie_name)
        self.sid = mw.signer.unsign(raw)
        self.cookie_bad = raw is not None and self.sid is None
        self.legacy_sid: str | None = None
        self.legacy_present = False
        if self.sid is None and mw._legacy_secrets:
            legacy_raw = read_cookie(headers, mw._legacy_name)
            self.legacy_present = legacy_raw is not None
            self.legacy_sid = verify_legacy_cookie(legacy_raw, mw._legacy_secrets)
        self.unknown = False
        self.migrate = False
        self.unavailable = False
        has_id = self.sid is not None or self.legacy_sid is not None
        self.session = Session(
            loader=self.load if has_id else None, max_size=mw.settings.max_size_bytes
        )
        scope["session"] = self.session
        if self.sid is not None:
            scope_state(scope)["session_id"] = self.sid

    async def load(self, session: Session) -> None:
        mw = self.mw
        key = self.sid if self.sid is not None else LEGACY_PREFIX + str(self.legacy_sid)
        corrupt = False
        try:
            # Called directly (not through mw.store) to keep the read path short.
            record = await mw.backend.load(key)
        except CorruptSessionError as exc:
            corrupt = True
            _loads.add(1, {"result": "invalid"})
            mw.corrupt(key, exc)
            record = None
        except StoreError as exc:
            _loads.add(1, {"result": "error"})
            _fallbacks.add(1, {"component": "sessions", "policy": mw.settings.fail_mode})
            try:
                mw.failed(exc)
            except StoreError:
                if mw.settings.fail_mode == "closed":
                    self.unavailable = True
                    raise
            session._degraded = True
            return
        else:
            if mw._store_down:
                mw.recovered()
        if record is None or record.data is None or record.expires_at <= mw.clock():
            if not corrupt:
                _MISSES.value += 1
            self.unknown = True
            return
        _HITS.value += 1
        session._populate(record.data, record.version, record.expires_at, key)
        self.migrate = self.sid is None

    async def __call__(self, receive: Receive, send: Send) -> None:
        scope, mw = self.scope, self.mw
        replaced = started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal replaced, started
            if message["type"] == "http.response.start":
                started = True
                status, detail = 0, ""
                extra: list[Header] = []
                if self.unavailable and message["status"] >= 500:
                    status, detail = 503, _UNAVAILABLE
                elif self.needs_commit():
                    try:
                        extra = await self.commit()
                    except SessionUnavailableError:
                        # Open: the response goes out, the session change is lost (logged).
                        if mw.settings.fail_mode == "closed":
                            status, detail = 503, _UNAVAILABLE
                    except SessionTooLargeError as exc:
                        status, detail = 500, str(exc)
                    if extra and not status:
                        message = dict(message)
                        message["headers"] = [*message.get("headers", []), *extra]
                if status:
                    replaced = True
                    response = problem_response(
                        status, detail=detail, instance=scope.get("path"),
                        headers={"Retry-After": "1"} if status == 503 else None,
                    )  # fmt: skip
                    await response(scope, receive, send)
                    return
            elif replaced and message["type"] == "http.response.body":
                return
            await send(message)

        if (
            mw._eager_any
            and self.session._loader is not None
            and (mw.settings.eager or scope.get("path", "").startswith(mw._eager_paths))
        ):
            try:
                await self.session.load()
            except SessionUnavailableError:
                if scope["type"] == "http":
                    await send_wrapper(_FAILED_START)
                    return
                raise
        if scope["type"] != "http":
            # WebSocket sessions can be read; there is no response to carry a cookie.
            await mw.app(scope, receive, send)
            return
        try:
            await mw.app(scope, receive, send_wrapper)
        except SessionUnavailableError:
            if replaced:
                return  # the client already has its 503
            if started:
                raise
            self.unavailable = True
            await send_wrapper(_FAILED_START)
