"""The write-back half of a session request: what to write, and the writes themselves.

Every write is a compare-and-set; a conflicting write is merged key by key
and retried (:func:`~freightscale.sessions.session.merge_changes`).
:class:`~freightscale.sessions._responder._Responder` mixes this in.
"""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING, Any

from freightscale.context import scope_state
from freightscale.exceptions import StoreError
from freightscale.sessions._common import LEGACY_PREFIX, Header, _saves
from freightscale.sessions.cookies import new_session_id
from freightscale.sessions.session import Session, SessionUnavailableError, merge_changes
from freightscale.types import Scope

if TYPE_CHECKING:
    from freightscale.sessions.middleware import SessionMiddleware


class _Commit:
    """Write-back methods of the per-request responder (its slots hold the state)."""

    __slots__ = ()
    # Set by the responder's __init__ (and by its load for ``unknown`` / ``migrate``).
    mw: SessionMiddleware
    scope: Scope
    session: Session
    sid: str | None
    cookie_bad: bool
    legacy_present: bool
    migrate: bool
    unknown: bool

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
