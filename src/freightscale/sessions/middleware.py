"""``SessionMiddleware``: server-side sessions behind an opaque signed cookie.

Per request: the cookie is verified without any store call; the store is
read only when the handler loads the session (or the route is eager); it is
written only when the data changed, the session was regenerated or cleared,
or the sliding-expiry interval passed. Every write is a compare-and-set; a
conflicting write is merged key by key and retried
(:func:`~freightscale.sessions.session.merge_changes`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from cachetools import TTLCache

from freightscale.context import scope_state
from freightscale.errors import problem_response
from freightscale.exceptions import ConfigurationError, StoreError, StoreUnavailableError
from freightscale.sessions.backends import CorruptSessionError, SessionBackend
from freightscale.sessions.config import backend_from_settings
from freightscale.sessions.cookies import (
    CookieSigner,
    delete_cookie_header,
    new_session_id,
    read_cookie,
    set_cookie_header,
    verify_legacy_cookie,
)
from freightscale.sessions.session import (
    Session,
    SessionTooLargeError,
    SessionUnavailableError,
    merge_changes,
)
from freightscale.settings.sessions import SessionSettings
from freightscale.telemetry import get_counter
from freightscale.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from freightscale.backends.redis import RedisClient
    from freightscale.settings.redis import RedisSettings

__all__ = ["LEGACY_PREFIX", "SessionMiddleware"]

T = TypeVar("T")
logger = logging.getLogger("freightscale.sessions")
# Names, units and labels are registered in freightscale.telemetry.instruments.
_loads = get_counter("freightscale.sessions.loads")  # result: hit, miss, invalid, error
_saves = get_counter("freightscale.sessions.saves")  # result: saved, deleted, conflict, error
_outages = get_counter("freightscale.backend.outages")  # service, component
_fallbacks = get_counter("freightscale.backend.fallbacks")  # component, policy
_HITS, _MISSES = _loads.series({"result": "hit"}), _loads.series({"result": "miss"})

LEGACY_PREFIX = "legacy:"
"""Imported legacy sessions live under ``legacy:<sid>``; freightscale ids never contain ``:``."""

Header = tuple[bytes, bytes]
# A stand-in response start that makes the send wrapper answer 503 problem+json.
_FAILED_START: Message = {"type": "http.response.start", "status": 503, "headers": []}
_UNAVAILABLE = "the session store is unavailable; try again shortly"


class SessionMiddleware:
    """Pure-ASGI server-side sessions (Starlette ``request.session`` compatible).

    Args:
        app: the ASGI app to wrap.
        settings: the sessions section (``secret_keys`` is required).
        backend: where sessions live; default from ``settings.store_url``,
            else ``redis_client``, else memory.
        redis_client: a shared Redis client to keep sessions in (not closed here).
        redis_settings: the shared Redis settings (key prefix, or a URL to connect to).
        clock: wall clock in Unix seconds (tests inject one).

    Raises:
        ConfigurationError: when no secret key is configured.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: SessionSettings,
        *,
        backend: SessionBackend | None = None,
        redis_client: RedisClient | None = None,
        redis_settings: RedisSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.secret_keys:
            raise ConfigurationError(
                "sessions need a signing secret: set FREIGHTSCALE_SESSIONS__SECRET_KEYS to a JSON "
                'list like ["<32+ random characters>"] (SessionSettings.secret_keys)'
            )
        self.app = app
        self.settings = settings
        if backend is None:
            backend, self._owns_backend = backend_from_settings(
                settings, redis_client=redis_client, redis_settings=redis_settings, clock=clock
            )
        else:
            self._owns_backend = False
        self.backend: SessionBackend = backend
        self.signer = CookieSigner([k.get_secret_value() for k in settings.secret_keys])
        self.clock = clock
        self._cookie_name = settings.cookie_name.encode()
        legacy = settings.legacy_secret.get_secret_value()
        self._legacy_secrets = [legacy] if legacy else []
        self._legacy_name = settings.legacy_cookie_name.encode()
        self._eager_paths = tuple(settings.eager_paths)
        self._eager_any = settings.eager or bool(self._eager_paths)
        self._max_age = settings.max_age
        self._refresh_interval = settings.refresh_interval
        attrs: dict[str, Any] = {
            "path": settings.path,
            "domain": settings.domain,
            "secure": settings.secure,
            "http_only": settings.http_only,
            "same_site": settings.same_site,
        }
        self._cookie_attrs: dict[str, Any] = attrs
        self._delete_cookie = delete_cookie_header(settings.cookie_name, **attrs)
        self._delete_legacy = delete_cookie_header(settings.legacy_cookie_name, **attrs)
        name = type(self.backend).__name__.lower()
        self._service = next((k for k in ("redis", "postgres", "memory") if k in name), "other")
        self._store_down = False
        self._corrupt_logged: TTLCache[str, bool] = TTLCache(maxsize=1024, ttl=3600)

    def __repr__(self) -> str:
        return f"SessionMiddleware(backend={self.backend!r}, cookie={self.settings.cookie_name!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        responder = _Responder(self, scope)
        try:
            await responder(receive, send)
        finally:
            # The session's loader is a bound method of the responder, which holds
            # the session: break that cycle so each request's objects are freed at
            # once instead of piling up for the garbage collector.
            responder.session._loader = None

    async def aclose(self) -> None:
        """Close the backend if this middleware created it (stops its cleanup task)."""
        if self._owns_backend:
            await self.backend.aclose()

    # -- store calls: timeout, outage tracking -----------------------------
    async def store(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one backend call, tracking outages.

        Each backend bounds its own calls (Redis: the client's socket and pool
        timeouts; PostgreSQL: ``settings.timeout``); a second timer here would
        cost more than the Redis GET it guards.
        """
        try:
            value = await call()
        except CorruptSessionError:
            raise
        except (StoreError, TimeoutError) as exc:
            _saves.add(1, {"result": "error"})
            self.failed(exc)
        if self._store_down:
            self.recovered()
        return value

    def failed(self, exc: Exception) -> NoReturn:
        """Count a failed store call, log the outage once, and re-raise it
        (as :class:`SessionUnavailableError` when the store is unreachable)."""
        if not self._store_down:
            self._store_down = True
            _outages.add(1, {"service": self._service, "component": "sessions"})
            logger.warning(
                "session store unavailable (%s); fail_mode=%s until it recovers",
                exc or "timeout",
                self.settings.fail_mode,
            )
        if isinstance(exc, StoreUnavailableError | TimeoutError):
            raise SessionUnavailableError(f"session store unavailable: {exc}") from exc
        raise exc

    def recovered(self) -> None:
        """Log the end of an outage (once)."""
        if self._store_down:
            self._store_down = False
            logger.warning("session store recovered")

    def corrupt(self, session_id: str, exc: Exception) -> None:
        """Count a corrupt entry; log it once per id."""
        if session_id not in self._corrupt_logged:
            self._corrupt_logged[session_id] = True
            logger.warning("ignoring corrupt session %s…: %s", session_id[:8], exc)

    def set_cookie(self, session_id: str) -> Header:
        """The ``Set-Cookie`` header that hands ``session_id`` to the client."""
        return set_cookie_header(
            self.settings.cookie_name,
            self.signer.sign(session_id),
            max_age=self.settings.max_age,
            **self._cookie_attrs,
        )


class _Responder:
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

    def needs_commit(self) -> bool:
        """Whether :meth:`commit` has anything to do; False for the common requests
        (session untouched, or loaded and only read), which skip it entirely."""
        s = self.session
        if s._cleared or self.cookie_bad or self.legacy_present:
            return True
        if not s._loaded:
            return False
        if s.id is None or s._regenerate or self.migrate or s._snapshot is not None:
            return True  # data for a new id, or data that may have changed
        # Loaded from the store and provably unchanged: only a due sliding-expiry refresh writes.
        mw = self.mw
        return mw.clock() - (s.expires_at - mw._max_age) >= mw._refresh_interval

    async def commit(self) -> list[Header]:
        """Write the session back if needed; return the cookie headers to add."""
        mw, s = self.mw, self.session
        headers: list[Header] = []
        if s.is_degraded:
            return headers  # never persist what was built while the store was down
        if self.legacy_present and (self.migrate or s._cleared or (s.is_loaded and s.id is None)):
            headers.append(mw._delete_legacy)
        if s._cleared:
            if s.id is not None:
                await self._retire(s.id, s.version, s.expires_at)
            if self.sid is not None or self.cookie_bad:
                headers.append(mw._delete_cookie)
            return headers
        if not s.is_loaded:
            if self.cookie_bad:
                headers.append(mw._delete_cookie)
            return headers
        encoded = s.check_size() if s.may_have_changed else None
        now = mw.clock()
        expires_at = now + mw.settings.max_age
        if s.id is None or s._regenerate or self.migrate:
            if s.id is None and not s._data:
                if self.cookie_bad or (self.unknown and self.sid is not None):
                    headers.append(mw._delete_cookie)
                return headers
            new_id = await self._create(s._data, expires_at)
            if s.id is not None:
                await self._retire(s.id, s.version, s.expires_at)
            scope_state(self.scope)["session_id"] = new_id
            headers.append(mw.set_cookie(new_id))
            return headers
        if encoded is not None and encoded != s.original:
            if await self._update(s.id, json.loads(s.original), s._data, s.version, expires_at):
                headers.append(mw.set_cookie(s.id))
            else:
                headers.append(mw._delete_cookie)
            return headers
        if now - (s.expires_at - mw.settings.max_age) >= mw.settings.refresh_interval:
            # Sliding expiry; a conflict means another request just wrote (and renewed) it.
            refreshed = await mw.store(
                partial(mw.backend.compare_and_set, s.id, s._data, expires_at, version=s.version)
            )
            if refreshed.ok:
                _saves.add(1, {"result": "saved"})
            headers.append(mw.set_cookie(s.id))
        return headers

    async def _create(self, data: dict[str, Any], expires_at: float) -> str:
        backend = self.mw.backend
        for _ in range(3):
            sid = new_session_id()
            result = await self.mw.store(
                partial(backend.compare_and_set, sid, data, expires_at, version=0)
            )
            if result.ok:
                _saves.add(1, {"result": "saved"})
                return sid
        raise StoreError("could not allocate a free session id")  # pragma: no cover

    async def _retire(self, sid: str, version: int, expires_at: float) -> None:
        backend = self.mw.backend
        if not sid.startswith(LEGACY_PREFIX):
            await self.mw.store(partial(backend.delete, sid))
            _saves.add(1, {"result": "deleted"})
            return
        # A tombstone until the legacy session would have expired, so a re-run
        # import never brings it back.
        for _ in range(3):
            result = await self.mw.store(
                partial(backend.compare_and_set, sid, None, expires_at, version=version)
            )
            if result.ok or result.current is None:
                _saves.add(1, {"result": "deleted"})
                return
            version = result.current.version

    async def _update(
        self, sid: str, original: dict[str, Any], mine: dict[str, Any], version: int,
        expires_at: float,
    ) -> bool:  # fmt: skip
        """CAS-write ``mine``; on conflict merge key by key and retry. False if the
        session was deleted meanwhile (a logout elsewhere wins: never resurrected)."""
        mw = self.mw
        data = mine
        for _ in range(mw.settings.conflict_retries + 1):
            result = await mw.store(
                partial(mw.backend.compare_and_set, sid, data, expires_at, version=version)
            )
            if result.ok:
                _saves.add(1, {"result": "saved"})
                return True
            current = result.current
            if current is None or current.data is None:
                return False
            _saves.add(1, {"result": "conflict"})
            data = merge_changes(original, mine, current.data)
            version = current.version
        raise SessionUnavailableError(
            f"session write still conflicted after {mw.settings.conflict_retries} merges "
            "(sessions.conflict_retries)"
        )
