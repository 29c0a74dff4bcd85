"""Passwords, access tokens and role permissions.

Passwords are hashed with the standard library's PBKDF2-SHA256 (no extra
dependency); hashes carry their own parameters so the cost can be raised
later. Access tokens are HS256 JWTs signed with ``FREIGHTSCALE_AUTH__SECRET``
so freightscale's authentication component verifies exactly what the login
route issues.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import jwt
from sqlalchemy.ext.asyncio import AsyncEngine

from examples.freightops.models import ROLE_PERMISSIONS
from freightscale.auth import PermissionLoader

__all__ = [
    "TOKEN_ISSUER",
    "decode_token",
    "hash_password",
    "issue_token",
    "permission_loader",
    "permissions_for",
    "plan_loader",
    "verify_password",
]

logger = logging.getLogger("freightops")

TOKEN_ISSUER = "freightops"
_ALGORITHM = "pbkdf2_sha256"


def hash_password(password: str, *, iterations: int = 120_000, salt: bytes | None = None) -> str:
    """Return ``pbkdf2_sha256$<iterations>$<salt>$<hash>`` for ``password``."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return "$".join(
        (_ALGORITHM, str(iterations), _b64(salt), _b64(digest)),
    )


def verify_password(password: str, encoded: str) -> bool:
    """Check ``password`` against a hash from :func:`hash_password` in constant time."""
    try:
        algorithm, iterations, salt, digest = encoded.split("$")
        rounds = int(iterations)
    except ValueError:
        return False
    if algorithm != _ALGORITHM or not 1 <= rounds <= 10_000_000:
        return False
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), _unb64(salt), rounds)
    return hmac.compare_digest(candidate, _unb64(digest))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def permissions_for(role: str) -> frozenset[str]:
    """The permissions ``role`` grants (none for an unknown role)."""
    return ROLE_PERMISSIONS.get(role, frozenset())


def issue_token(
    secret: str,
    *,
    user_id: int,
    tenant_id: int,
    role: str,
    session_id: str,
    ttl: int,
    now: float | None = None,
) -> tuple[str, dict[str, Any]]:
    """Sign an access token for a user's login session; return it and its claims.

    ``iat`` is a float so that logout-everywhere (which revokes tokens issued
    before an instant) never revokes a token issued in the same second after it.
    """
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": TOKEN_ISSUER,
        "sub": str(user_id),
        "tenant": str(tenant_id),
        "roles": [role],
        "scope": " ".join(sorted(permissions_for(role))),
        "sid": session_id,
        "jti": uuid.uuid4().hex,
        "iat": issued,
        "exp": int(issued) + ttl,
    }
    return jwt.encode(claims, secret, algorithm="HS256"), claims


def decode_token(secret: str, token: str, *, leeway: float = 30.0) -> Mapping[str, Any]:
    """Verify an access token's signature, expiry and issuer; return its claims.

    Raises:
        jwt.InvalidTokenError: for any invalid token.
    """
    claims: Mapping[str, Any] = jwt.decode(
        token,
        secret,
        algorithms=["HS256"],
        issuer=TOKEN_ISSUER,
        leeway=leeway,
        options={"require": ["exp", "iat", "sub", "tenant", "sid"]},
    )
    return claims


def permission_loader(
    engine: Callable[[], AsyncEngine],
) -> PermissionLoader:
    """The app's RBAC loader for ``freightscale.auth``: roles → permissions.

    One query on the ``roles`` table (each row holds a role's space-separated
    permissions); the authentication layer caches the answer per
    ``(tenant, roles)`` in process and in the shared store, so it runs about
    once per ``FREIGHTSCALE_AUTH__PERMISSION_TTL`` per role rather than on
    every request. ``engine`` is a getter: the app may swap its engines for
    the stack's before serving.

    When the database is unreachable (or its pool exhausted) the loader
    answers the built-in grants the ``roles`` table is seeded from
    (:data:`~examples.freightops.models.ROLE_PERMISSIONS`), so the request
    reaches its route, whose own query then answers the documented 503
    (reason, ``Retry-After``) rather than the auth layer failing the request.
    """
    outage = False

    async def load(tenant_id: str | None, roles: frozenset[str]) -> frozenset[str]:
        nonlocal outage
        from sqlalchemy import select

        from examples.freightops.models import Role
        from freightscale.db import is_unavailable

        if not roles:
            return frozenset()
        try:
            async with engine().connect() as conn:
                rows = await conn.scalars(
                    select(Role.permissions).where(Role.name.in_(sorted(roles)))
                )
                granted = frozenset(p for row in rows for p in row.split())
        except Exception as exc:
            if is_unavailable(exc) is None:
                raise
            if not outage:
                logger.warning("roles table unavailable (%r): using the built-in grants", exc)
            outage = True
            return frozenset().union(*(permissions_for(role) for role in roles))
        if outage:
            logger.info("roles table reachable again")
        outage = False
        return granted

    return load


def plan_loader(
    engine: Callable[[], AsyncEngine], plan_limits: Mapping[str, str]
) -> Callable[[str], Awaitable[str | None]]:
    """The per-tenant limits for ``freightscale.ratelimit`` (``ratelimit_plan_loader=``).

    Reads the tenant's plan (``tenants.plan``) and answers its limits from
    ``FREIGHTOPS_PLAN_LIMITS`` (``None``: the rule's own limits). The rate
    limiter caches the answer (``FREIGHTSCALE_RATELIMIT__PLAN_CACHE_TTL``) and
    falls back to the rule's own limits when this raises or times out.
    """

    async def load(tenant_id: str) -> str | None:
        from sqlalchemy import select

        from examples.freightops.models import Tenant

        try:
            key = int(tenant_id)
        except ValueError:
            return None
        async with engine().connect() as conn:
            plan = await conn.scalar(select(Tenant.plan).where(Tenant.id == key))
        return plan_limits.get(str(plan or "free"))

    return load
