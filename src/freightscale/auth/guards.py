"""``require_permission``: one guard for Starlette endpoints and FastAPI dependencies.

As a Starlette endpoint decorator it answers 401 (no principal) or 403 (a
permission is missing) with problem+json before the endpoint runs::

    @require_permission("shipments:write")
    async def create_shipment(request: Request) -> Response: ...

As a FastAPI dependency it returns the principal or raises an error that is
both a Starlette ``HTTPException`` (so FastAPI answers 401/403, never 500)
and a freightscale error (so :func:`auth_exception_handler` can render it as
problem+json)::

    @app.post("/shipments")
    async def create(principal: Principal = Depends(require_permission("shipments:write"))): ...

Deny by default: a principal without permissions passes no guard.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from freightscale.context import Principal
from freightscale.errors import problem_response
from freightscale.exceptions import AuthenticationError, FreightScaleError, PermissionDenied

__all__ = [
    "NotAuthenticated",
    "PermissionRequirement",
    "auth_exception_handler",
    "require_permission",
]

F = TypeVar("F", bound=Callable[..., Any])

BEARER_CHALLENGE = 'Bearer realm="api"'


class NotAuthenticated(AuthenticationError, HTTPException):
    """401 from a guard: the request has no (valid) credentials."""

    def __init__(self, detail: str = "authentication required") -> None:
        HTTPException.__init__(self, 401, detail, {"WWW-Authenticate": BEARER_CHALLENGE})


class Forbidden(PermissionDenied, HTTPException):
    """403 from a guard: the principal lacks a permission."""

    def __init__(self, detail: str) -> None:
        HTTPException.__init__(self, 403, detail)


class PermissionRequirement:
    """Require every one of ``permissions``; see :func:`require_permission`."""

    def __init__(self, *permissions: str) -> None:
        if not permissions or not all(isinstance(p, str) and p for p in permissions):
            raise ValueError("require_permission() needs one or more non-empty permission names")
        self.permissions = permissions
        # Each permission with every grant that covers it ("a:b" <- "a:b", "a:*", "*"),
        # so a check is one C-level isdisjoint() per permission.
        self._covering = [(p, frozenset(_covering(p))) for p in permissions]
        # What FastAPI sees when this object is a dependency: one HTTPConnection parameter.
        self.__signature__ = inspect.Signature(
            [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                               annotation=HTTPConnection)],
            return_annotation=Principal,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"require_permission({', '.join(map(repr, self.permissions))})"

    def check(self, conn: HTTPConnection) -> Principal:
        """Return the request's principal if it holds every permission.

        Raises:
            NotAuthenticated: no principal.
            Forbidden: a permission is missing.
        """
        # get_principal(conn.scope) without its call (this runs on every guarded request).
        principal = conn.scope.get("user")
        if not isinstance(principal, Principal):
            raise NotAuthenticated()
        granted = principal.permissions
        for permission, covering in self._covering:
            if granted.isdisjoint(covering):
                raise Forbidden(f"missing permission {permission!r}")
        return principal

    @overload
    def __call__(self, request: HTTPConnection) -> Principal: ...

    @overload
    def __call__(self, request: F) -> F: ...

    def __call__(self, request: Any) -> Any:
        if isinstance(request, HTTPConnection):
            return self.check(request)
        if callable(request):
            return self._decorate(request)
        raise TypeError("require_permission() decorates an endpoint or is used with Depends()")

    def _decorate(self, endpoint: Callable[..., Any]) -> Callable[..., Any]:
        is_async = inspect.iscoroutinefunction(endpoint)
        if is_async and _takes_one_request(endpoint):
            return self._decorate_request_endpoint(endpoint)

        @functools.wraps(endpoint)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            first = args[0] if args else None
            # type() first: isinstance() against the Mapping ABC costs a Python-level check.
            if type(first) is Request or isinstance(first, HTTPConnection):
                conn: HTTPConnection | None = first
            else:
                conn = next(
                    (a for a in (*args, *kwargs.values()) if isinstance(a, HTTPConnection)), None
                )
            if conn is None:
                raise TypeError(f"{endpoint.__qualname__} received no request to check")
            try:
                self.check(conn)
            except FreightScaleError as exc:
                return _problem(conn, exc)
            if is_async:
                return await endpoint(*args, **kwargs)
            return await run_in_threadpool(endpoint, *args, **kwargs)

        return guarded

    def _decorate_request_endpoint(self, endpoint: Callable[..., Any]) -> Callable[..., Any]:
        # The common Starlette endpoint, ``async def endpoint(request)``: the same
        # guard as the general wrapper, without packing and unpacking arguments.
        check = self.check

        @functools.wraps(endpoint)
        async def guarded(request: Any) -> Any:
            if type(request) is not Request and not isinstance(request, HTTPConnection):
                raise TypeError(f"{endpoint.__qualname__} received no request to check")
            try:
                check(request)
            except FreightScaleError as exc:
                return _problem(request, exc)
            return await endpoint(request)

        return guarded


def _takes_one_request(endpoint: Callable[..., Any]) -> bool:
    """Whether ``endpoint`` is called with exactly one positional argument (the request)."""
    try:
        parameters = list(inspect.signature(endpoint).parameters.values())
    except (TypeError, ValueError):
        return False
    return (
        len(parameters) == 1
        and parameters[0].kind
        in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and parameters[0].default is inspect.Parameter.empty
    )


def _covering(permission: str) -> list[str]:
    parts = permission.split(":")
    return [permission, "*", *(":".join(parts[:i]) + ":*" for i in range(1, len(parts)))]


def require_permission(*permissions: str) -> PermissionRequirement:
    """Guard an endpoint with permissions (all required; ``prefix:*`` grants match)."""
    return PermissionRequirement(*permissions)


def _problem(conn: HTTPConnection, exc: FreightScaleError) -> Response:
    headers = {"WWW-Authenticate": BEARER_CHALLENGE} if exc.status_code == 401 else None
    detail = getattr(exc, "detail", None) or str(exc)
    return problem_response(
        exc.status_code, title=exc.title, detail=detail, instance=conn.url.path, headers=headers
    )


async def auth_exception_handler(request: Request, exc: Exception) -> Response:
    """Starlette/FastAPI exception handler rendering freightscale errors as problem+json.

    Register it for :class:`~freightscale.exceptions.FreightScaleError`::

        app.add_exception_handler(FreightScaleError, auth_exception_handler)
    """
    if not isinstance(exc, FreightScaleError):
        raise exc
    return _problem(request, exc)
