"""``SessionMiddleware``: server-side sessions behind an opaque signed cookie.

Per request: the cookie is verified without any store call; the store is
read only when the handler loads the session (or the route is eager); it is
written only when the data changed, the session was regenerated or cleared,
or the sliding-expiry interval passed. Every write is a compare-and-set; a
conflicting write is merged key by key and retried
(:func:`~freightscale.sessions.session.merge_changes`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from cachetools import TTLCache

from freightscale.exceptions import ConfigurationError, StoreError, StoreUnavailableError
from freightscale.sessions._common import LEGACY_PREFIX, Header, _outages, _saves, logger
from freightscale.sessions._responder import _Responder
from freightscale.sessions.backends import CorruptSessionError, SessionBackend
from freightscale.sessions.config import backend_from_settings
from freightscale.sessions.cookies import CookieSigner, delete_cookie_header, set_cookie_header
from freightscale.sessions.session import SessionUnavailableError
from freightscale.settings.sessions import SessionSettings
from freightscale.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from freightscale.backends.redis import RedisClient
    from freightscale.settings.redis import RedisSettings

__all__ = ["LEGACY_PREFIX", "SessionMiddleware"]

T = TypeVar("T")


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
