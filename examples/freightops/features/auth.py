"""Login with a password (→ access token + session cookie), logout, logout-everywhere.

The freightscale profile issues tokens with ``freightscale.auth``'s
``TokenIssuer``, keeps the web login in ``freightscale.sessions`` and revokes
through the authenticator's revocation list; the naive profile keeps the
legacy tokens and session files (``_legacy_login``).
"""

from __future__ import annotations

import time
from typing import Any

import anyio.to_thread
import jwt
from sqlalchemy import select, update
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from examples.freightops.models import Role, Tenant, User
from examples.freightops.runtime import services
from examples.freightops.security import hash_password, issue_token, verify_password
from examples.freightops.standins import SESSION_COOKIE
from examples.freightops.web import JSON, Body, Problem, body, principal
from freightscale.sessions import Session, load_session

__all__ = ["routes"]

# Compared against when the email is unknown, so a miss costs as much as a hit
# (no user enumeration by timing).
_DUMMY_HASH = hash_password("not-a-password", iterations=120_000, salt=b"freightops-dummy")


class Login(Body):
    email: str
    password: str


async def login(request: Request) -> Response:
    """``POST /api/auth/login``: check the password, open a session, issue a token."""
    credentials = await body(request, Login)
    svc = services(request)
    async with svc.engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    User.id,
                    User.tenant_id,
                    User.email,
                    User.full_name,
                    User.password_hash,
                    User.is_active,
                    Role.name.label("role"),
                    Tenant.slug,
                    Tenant.name.label("tenant_name"),
                )
                .join(Role, Role.id == User.role_id)
                .join(Tenant, Tenant.id == User.tenant_id)
                .where(User.email == credentials.email.strip().lower()[:200])
            )
        ).one_or_none()
    stored = row.password_hash if row is not None else _DUMMY_HASH
    # PBKDF2 takes tens of milliseconds: never on the event loop.
    ok = await anyio.to_thread.run_sync(verify_password, credentials.password[:1024], stored)
    if row is None or not ok or not row.is_active:
        raise Problem(401, "invalid email or password")
    ttl = svc.config.token_ttl
    now = time.time()
    user = {
        "id": row.id,
        "email": row.email,
        "full_name": row.full_name,
        "role": row.role,
        "tenant": {"id": row.tenant_id, "slug": row.slug, "name": row.tenant_name},
    }
    if svc.issuer is None:
        return await _legacy_login(request, row, now, user)
    # freightscale.auth's issuer: the stack's auth layer verifies what it signs
    # (same FREIGHTSCALE_AUTH__* settings), with a random jti and a sub-second iat.
    token = svc.issuer.issue(str(row.id), tenant=str(row.tenant_id), roles=[row.role], ttl=ttl)
    # The web login: freightscale.sessions keeps the data server side and sets
    # the signed cookie when the response starts.
    session = await load_session(request)
    if session.id is not None:
        session.regenerate()  # a new id at every login (fixation defence)
    for key in list(session):
        del session[key]
    session.update(
        {
            "user_id": row.id,
            "tenant_id": row.tenant_id,
            "role": row.role,
            "created": now,
            "exp": now + ttl,
            # The token issued with it: logging out of the browser revokes it too.
            "jti": jwt.decode(token, options={"verify_signature": False})["jti"],
        }
    )
    return JSON({"access_token": token, "token_type": "bearer", "expires_in": ttl, "user": user})


async def _legacy_login(request: Request, row: Any, now: float, user: dict[str, Any]) -> Response:
    """The naive profile's login: a session file and a legacy token naming it."""
    svc = services(request)
    ttl = svc.config.token_ttl
    assert svc.sessions is not None
    session_id = await svc.sessions.create(
        {
            "user_id": row.id,
            "tenant_id": row.tenant_id,
            "role": row.role,
            "created": now,
            "exp": now + ttl,
        },
        ttl=ttl,
    )
    token, _claims = issue_token(
        svc.secret,
        user_id=row.id,
        tenant_id=row.tenant_id,
        role=row.role,
        session_id=session_id,
        ttl=ttl,
        now=now,
    )
    response = JSON(
        {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": ttl,
            "user": user,
        }
    )
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=ttl,
        httponly=True,
        samesite="lax",
        secure=svc.settings.environment != "development",
    )
    return response


async def _end_web_session(request: Request) -> str | None:
    """Clear the request's freightscale session (if it sent one); return its token's jti."""
    if SESSION_COOKIE not in request.cookies or not isinstance(
        request.scope.get("session"), Session
    ):
        return None
    session = await load_session(request)
    jti = session.get("jti")
    session.clear()  # deleted from the store, cookie expired
    return str(jti) if jti else None


async def logout(request: Request) -> Response:
    """``POST /api/auth/logout``: end this session and revoke this token."""
    who = principal(request)
    svc = services(request)
    if svc.auth is None:  # the naive profile: the token ends with its session file
        session_id = who.claims.get("sid")
        if session_id and svc.sessions is not None:
            await svc.sessions.delete(str(session_id))
        jti = who.claims.get("jti")
        if jti:
            remaining = max(1.0, float(who.claims.get("exp", 0)) - time.time() + 60)
            await svc.store.set(f"jti:{jti}", b"1", expires_in=remaining)
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE)
        return response
    # The bearer token of this request, and the token issued with the browser
    # session: every worker refuses them from now on (pub/sub; the stream as the bound).
    revoke = {str(j) for j in (who.claims.get("jti"), await _end_web_session(request)) if j}
    expires = time.time() + svc.config.token_ttl + 60
    for jti in revoke:
        await svc.auth.revocations.revoke_token(jti, expires_at=expires)
    return Response(status_code=204)


async def logout_everywhere(request: Request) -> Response:
    """``POST /api/auth/logout-everywhere``: revoke every token and session of the user."""
    who = principal(request)
    svc = services(request)
    now = time.time()
    if svc.auth is not None:
        # freightscale.auth's revocation list: every token (and, through the cookie
        # login, every web session) of the user issued before now, on every worker.
        await svc.auth.revocations.revoke_user(who.user_id, who.tenant_id, before=now)
        await _end_web_session(request)
    # The column is what the naive profile reads (a query per request).
    async with svc.writer() as conn:
        await conn.execute(
            update(User).where(User.id == int(who.user_id)).values(tokens_valid_after=now)
        )
    response = Response(status_code=204)
    if svc.auth is None:
        session_id = who.claims.get("sid")
        if session_id and svc.sessions is not None:
            await svc.sessions.delete(str(session_id))
        response.delete_cookie(SESSION_COOKIE)
    return response


async def me(request: Request) -> Response:
    """``GET /api/auth/me``: who the request is authenticated as."""
    who = principal(request)
    return JSON(
        {
            "user_id": int(who.user_id),
            "tenant_id": int(who.tenant_id or 0),
            "roles": sorted(who.roles),
            "permissions": sorted(who.scopes),
        }
    )


routes = [
    Route("/api/auth/login", login, methods=["POST"]),
    Route("/api/auth/logout", logout, methods=["POST"]),
    Route("/api/auth/logout-everywhere", logout_everywhere, methods=["POST"]),
    Route("/api/auth/me", me, methods=["GET"]),
]
