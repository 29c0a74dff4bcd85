"""The per-request session object and the key-by-key merge of conflicting writes.

``scope["session"]`` is a :class:`Session`: a dict-like object (so Starlette's
``request.session`` keeps working) that loads from the store **lazily**.
Starlette's ``request.session`` is synchronous, so the load cannot hide
inside ``__getitem__``; instead:

* a request without a session cookie has an empty session at no cost, and
  reading or writing it needs no ``await``;
* a request with a cookie loads on ``await load_session(request)`` (or
  ``await scope["session"].load()``); touching the data before that raises
  :class:`SessionNotLoadedError` with this explanation;
* ``eager`` / ``eager_paths`` settings load before the handler runs, for
  code that must use plain ``request.session``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

# A runtime import: FastAPI reads load_session's annotation to inject the request.
from starlette.requests import HTTPConnection

from freightscale.exceptions import FreightScaleError, StoreUnavailableError

__all__ = [
    "Session",
    "SessionNotLoadedError",
    "SessionTooLargeError",
    "SessionUnavailableError",
    "load_session",
    "merge_changes",
]


class SessionNotLoadedError(FreightScaleError, RuntimeError):
    """The handler touched a cookie-backed session before loading it."""


class SessionTooLargeError(FreightScaleError, ValueError):
    """The session's JSON grew beyond ``sessions.max_size_bytes``."""


class SessionUnavailableError(StoreUnavailableError):
    """The session store is down and ``fail_mode`` is ``closed`` (HTTP 503)."""


def dumps(data: Any) -> str:
    """The one JSON encoding of session data (no NaN, keys as given)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class Session(MutableMapping[str, Any]):
    """A lazily loaded, dict-like server-side session.

    Values must be JSON-serializable (checked when set). Besides the mapping
    interface: :meth:`load`, :meth:`regenerate` (new id, same data: call it at
    login) and :meth:`clear` (delete from the store and expire the cookie).
    """

    __slots__ = (
        "_cleared",
        "_data",
        "_degraded",
        "_loaded",
        "_loader",
        "_max_size",
        "_regenerate",
        "_snapshot",
        "expires_at",
        "id",
        "version",
    )

    def __init__(
        self,
        *,
        loader: Callable[[Session], Awaitable[None]] | None,
        max_size: int,
    ) -> None:
        self._data: dict[str, Any] = {}
        self._loader = loader
        self._loaded = loader is None
        self._max_size = max_size
        self._cleared = False
        self._regenerate = False
        self._degraded = False
        self._snapshot: str | None = None
        self.id: str | None = None
        """The stored session's id (None until it exists in the store)."""
        self.version = 0
        self.expires_at = 0.0

    def __repr__(self) -> str:
        state = "loaded" if self._loaded else "not loaded"
        return f"<Session {state}, {len(self._data) if self._loaded else '?'} keys>"

    # -- loading -----------------------------------------------------------
    @property
    def is_loaded(self) -> bool:
        """True once the data is available without an await."""
        return self._loaded

    @property
    def is_degraded(self) -> bool:
        """True when the store was down and ``fail_mode=open`` gave an empty session."""
        return self._degraded

    async def load(self) -> Session:
        """Load from the store if not done yet (at most one round trip per request)."""
        if not self._loaded and self._loader is not None:
            await self._loader(self)
            self._loaded = True
        return self

    def _populate(self, data: dict[str, Any], version: int, expires_at: float, sid: str) -> None:
        self._data = data
        self.version = version
        self.expires_at = expires_at
        self.id = sid

    def _need(self) -> dict[str, Any]:
        if not self._loaded:
            raise SessionNotLoadedError(
                "the session is not loaded yet: call `await load_session(request)` (or "
                "`await scope['session'].load()`) before using it, or list the route in "
                "FREIGHTSCALE_SESSIONS__EAGER_PATHS"
            )
        return self._data

    # -- change detection --------------------------------------------------
    # The JSON of the data as loaded is taken lazily, just before anything
    # could change it: a write, a delete, or handing out a mutable value
    # (``session["cart"].append(…)``). A request that only reads scalars
    # never serializes the session at all.
    def _before_change(self) -> None:
        if self._snapshot is None:
            self._snapshot = dumps(self._data)

    @property
    def original(self) -> str:
        """The session's JSON as loaded (the current JSON if it cannot have changed)."""
        return self._snapshot if self._snapshot is not None else dumps(self._data)

    @property
    def may_have_changed(self) -> bool:
        """False when the request provably changed nothing (no write, no mutable handed out)."""
        return self._snapshot is not None

    # -- mapping -----------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        value = self._need()[key]
        if isinstance(value, dict | list):
            self._before_change()
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        data = self._need()
        self._before_change()
        if not isinstance(key, str):
            raise TypeError(f"session keys are strings, got {type(key).__name__}")
        try:
            dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"session value for {key!r} is not JSON-serializable: {exc}") from None
        previous = data.get(key, _MISSING)
        data[key] = value
        try:
            self.check_size()
        except SessionTooLargeError:
            if previous is _MISSING:
                del data[key]
            else:
                data[key] = previous
            raise

    def get(self, key: str, default: Any = None) -> Any:
        """``dict.get`` (defined here: the mapping mixin's version is slower)."""
        value = self._need().get(key, default)
        if isinstance(value, dict | list):
            self._before_change()
        return value

    def __delitem__(self, key: str) -> None:
        data = self._need()
        self._before_change()
        del data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._need())

    def __len__(self) -> int:
        return len(self._need())

    def __contains__(self, key: object) -> bool:
        return key in self._need()

    def check_size(self) -> str:
        """Return the session's JSON, or raise :class:`SessionTooLargeError`."""
        encoded = dumps(self._data)
        size = len(encoded.encode())
        if size > self._max_size:
            raise SessionTooLargeError(
                f"the session would be {size} bytes of JSON, more than "
                f"sessions.max_size_bytes={self._max_size} "
                "(FREIGHTSCALE_SESSIONS__MAX_SIZE_BYTES); "
                "keep large data in the database and only its id in the session"
            )
        return encoded

    # -- lifecycle ---------------------------------------------------------
    def clear(self) -> None:
        """Empty the session, delete it from the store and expire the cookie."""
        self._before_change()
        self._data = {}
        self._loaded = True
        self._cleared = True
        self._regenerate = False

    def regenerate(self) -> None:
        """Move the data to a new id when the response is sent (fixation defense).

        The old id is deleted. Call it whenever the privilege level changes
        (login, logout of an elevated role).
        """
        self._need()
        self._regenerate = True
        self._cleared = False


class _Missing:
    pass


_MISSING = _Missing()


def merge_changes(
    original: dict[str, Any], mine: dict[str, Any], theirs: dict[str, Any]
) -> dict[str, Any]:
    """Re-apply this request's changes (``original`` → ``mine``) on top of ``theirs``.

    Keys this request set or deleted win; every other key keeps the
    concurrent writer's value, so neither write is lost. When both changed
    the same key, the later commit (this one) wins for that key.
    """
    merged = dict(theirs)
    for key, value in mine.items():
        if key not in original or dumps(original[key]) != dumps(value):
            merged[key] = value
    for key in original:
        if key not in mine:
            merged.pop(key, None)
    return merged


async def load_session(conn: HTTPConnection) -> Session:
    """Load and return the request's session (a FastAPI dependency as well).

    Raises:
        SessionUnavailableError: the store is down and ``fail_mode`` is closed
            (the middleware answers 503 problem+json).
        RuntimeError: when no :class:`SessionMiddleware` is installed.
    """
    session = conn.scope.get("session")
    if not isinstance(session, Session):
        raise RuntimeError("load_session() needs freightscale's SessionMiddleware around the app")
    return await session.load()
