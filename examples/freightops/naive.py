"""The legacy FreightOps design, kept as the "before" of every measurement.

Selected with ``FREIGHTOPS_PROFILE=naive``. The same routes and data run, but:

* login sessions live in a **file-based store**, read and re-written
  **synchronously** on the event loop on every authenticated request (the
  legacy app's "last seen" update), so one slow disk stalls every request;
* every request runs a **permission query** (user + role) against the
  database instead of trusting a verified, cached token;
* there is **no response cache** and **no compression**;
* there is **one unbounded pool** (``max_overflow=-1``), so load turns
  straight into database connections.

Nothing here is meant to be copied; it exists so the before/after in
``docs/performance.md`` is measured on the same code and data.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from sqlalchemy import select

from examples.freightops.models import Role, User
from examples.freightops.security import decode_token
from examples.freightops.standins import Unauthenticated, credentials, make_principal
from freightscale.context import Principal, bind_principal
from freightscale.errors import problem_response
from freightscale.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from examples.freightops.runtime import Services

__all__ = ["FileSessionStore", "NaiveAuthMiddleware"]


class FileSessionStore:
    """One JSON file per session in a directory, with blocking file I/O (legacy)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, session_id: str) -> Path | None:
        if not (16 <= len(session_id) <= 64) or not all(
            c.isalnum() or c in "-_" for c in session_id
        ):
            return None
        return self.directory / f"{session_id}.json"

    async def create(self, data: Mapping[str, Any], *, ttl: int) -> str:
        session_id = secrets.token_urlsafe(24)
        path = self._path(session_id)
        assert path is not None
        self.save(path, dict(data))
        return session_id

    async def get(self, session_id: str) -> dict[str, Any] | None:
        path = self._path(session_id)
        if path is None:
            return None
        try:
            # Deliberately synchronous: the legacy store blocked the event loop.
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data

    async def touch(self, session_id: str, data: dict[str, Any]) -> None:
        """Record the request time in the session file (legacy "last seen")."""
        path = self._path(session_id)
        if path is not None:
            data["last_seen"] = time.time()
            self.save(path, data)

    async def delete(self, session_id: str) -> None:
        path = self._path(session_id)
        if path is not None:
            path.unlink(missing_ok=True)

    @staticmethod
    def save(path: Path, data: dict[str, Any]) -> None:
        """Write the session file (atomically, synchronously)."""
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)


class NaiveAuthMiddleware:
    """Legacy authentication: token + session file + a permission query per request."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        assert isinstance(services.sessions, FileSessionStore)
        self.sessions: FileSessionStore = services.sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            principal = await self.authenticate(scope)
        except Unauthenticated as exc:
            response = problem_response(401, detail=str(exc), instance=scope.get("path"))
            await response(scope, receive, send)
            return
        with bind_principal(principal, scope):
            await self.app(scope, receive, send)

    async def authenticate(self, scope: Scope) -> Principal | None:
        token, session_id = credentials(scope)
        claims: dict[str, Any] = {}
        if token is not None:
            try:
                claims = dict(decode_token(self.services.secret, token))
            except jwt.InvalidTokenError as exc:
                raise Unauthenticated(f"invalid access token: {exc}") from None
            session_id = str(claims["sid"])
        if session_id is None:
            return None
        session = await self.sessions.get(session_id)
        if session is None or float(session.get("exp", 0)) < time.time():
            if token is None:
                return None  # a stale cookie is ignored, as in the freightscale profile
            raise Unauthenticated("the session has expired or was logged out")
        issued = float(claims.get("iat", session.get("created", 0)))
        async with self.services.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        User.tenant_id,
                        User.is_active,
                        User.tokens_valid_after,
                        Role.name,
                        Role.permissions,
                    )
                    .join(Role, Role.id == User.role_id)
                    .where(User.id == int(session["user_id"]))
                )
            ).one_or_none()
        if row is None or not row.is_active or issued <= row.tokens_valid_after:
            if token is None:
                return None
            raise Unauthenticated("all sessions of this user were logged out")
        await self.sessions.touch(session_id, session)
        claims.setdefault("sid", session_id)
        return make_principal(
            str(session["user_id"]),
            str(row.tenant_id),
            row.name,
            claims,
            permissions=row.permissions.split(),
        )
