"""Tenant and user administration (admins only)."""

from __future__ import annotations

import anyio.to_thread
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from examples.freightops.models import ROLE_PERMISSIONS, Role, Tenant, User
from examples.freightops.runtime import services
from examples.freightops.security import hash_password
from examples.freightops.web import (
    JSON,
    Body,
    Problem,
    body,
    int_param,
    invalidate,
    keyset_page,
    tenant_id,
)
from freightscale.auth import require_permission

__all__ = ["routes"]

_USER_COLUMNS = (User.id, User.email, User.full_name, Role.name.label("role"), User.is_active)


class NewUser(Body):
    email: str
    full_name: str
    password: str
    role: str


class UserChange(Body):
    role: str | None = None
    is_active: bool | None = None
    full_name: str | None = None


@require_permission("tenant:read")
async def tenant(request: Request) -> Response:
    """``GET /api/tenant``: the principal's tenant and its size."""
    tid = tenant_id(request)
    async with services(request).reader() as conn:
        row = (
            (
                await conn.execute(
                    select(Tenant.id, Tenant.slug, Tenant.name, Tenant.plan).where(Tenant.id == tid)
                )
            )
            .mappings()
            .one()
        )
        users = await conn.scalar(select(func.count()).where(User.tenant_id == tid))
    return JSON(dict(row, users=users))


@require_permission("users:read")
async def list_users(request: Request) -> Response:
    """``GET /api/users``: the tenant's users."""
    stmt = (
        select(*_USER_COLUMNS)
        .join(Role, Role.id == User.role_id)
        .where(User.tenant_id == tenant_id(request))
    )
    async with services(request).reader() as conn:
        return JSON(await keyset_page(request, conn, stmt, User.id))


async def _role_id(conn: object, name: str) -> int:
    if name not in ROLE_PERMISSIONS:
        raise Problem(422, f"unknown role {name!r}; one of {', '.join(sorted(ROLE_PERMISSIONS))}")
    role = await conn.scalar(select(Role.id).where(Role.name == name))  # type: ignore[attr-defined]
    assert role is not None
    return int(role)


@require_permission("users:write")
async def create_user(request: Request) -> Response:
    """``POST /api/users``: add a user to the tenant."""
    data = await body(request, NewUser)
    if len(data.password) < 8:
        raise Problem(422, "password must have at least 8 characters")
    svc = services(request)
    encoded = await anyio.to_thread.run_sync(
        lambda: hash_password(data.password, iterations=svc.config.password_iterations)
    )
    tid = tenant_id(request)
    try:
        async with svc.writer() as conn:
            role_id = await _role_id(conn, data.role)
            new_id = await conn.scalar(
                insert(User)
                .values(
                    tenant_id=tid,
                    email=data.email.strip().lower(),
                    full_name=data.full_name,
                    password_hash=encoded,
                    role_id=role_id,
                )
                .returning(User.id)
            )
    except IntegrityError:
        raise Problem(409, "a user with this email already exists") from None
    await invalidate(request, "users")
    return JSON(
        {"id": new_id, "email": data.email.strip().lower(), "role": data.role}, status_code=201
    )


@require_permission("users:write")
async def change_user(request: Request) -> Response:
    """``PATCH /api/users/{id}``: change a user's role, name or active flag."""
    change = await body(request, UserChange)
    user_id = int_param(request, "user_id")
    tid = tenant_id(request)
    values: dict[str, object] = {}
    async with services(request).writer() as conn:
        if change.role is not None:
            values["role_id"] = await _role_id(conn, change.role)
        if change.is_active is not None:
            values["is_active"] = change.is_active
        if change.full_name is not None:
            values["full_name"] = change.full_name
        if not values:
            raise Problem(422, "nothing to change")
        result = await conn.execute(
            update(User).where(User.id == user_id, User.tenant_id == tid).values(**values)
        )
        if result.rowcount == 0:
            raise Problem(404, "no such user")
    await invalidate(request, "users")
    return Response(status_code=204)


routes = [
    Route("/api/tenant", tenant, methods=["GET"]),
    Route("/api/users", list_users, methods=["GET"]),
    Route("/api/users", create_user, methods=["POST"]),
    Route("/api/users/{user_id:int}", change_user, methods=["PATCH"]),
]
