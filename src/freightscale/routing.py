"""Route dispatch whose cost does not grow with the route table.

Starlette's ``Router`` tries every route's regex in order, so an app with
hundreds of routes pays for all of them before the one that matches (and
for *all* of them on a 404). :class:`IndexedRouter` is a drop-in subclass
that first narrows the table to the routes that *can* match, then runs
Starlette's own ``matches()`` on those few, in their original order — so it
returns exactly what Starlette would: the same endpoint, path params, 405
for a known path with another method, slash redirects and 404s.

How it narrows: a route compiled from ``/shipments/{id:int}/events`` can
only match paths that start with its literal prefix ``/shipments/``.
Routes without parameters go into a dict keyed by their exact path; the
others are keyed by their literal prefix, and a path is looked up once per
distinct prefix length. ``Host`` routes and route classes it does not know
are always tried. The candidate list of recently seen paths is memoised in
a bounded LRU cache.

Use it with :func:`use_indexed_router` on a Starlette app, or construct
``IndexedRouter(routes=[...])`` directly (for example as a ``Mount``'s app).
FastAPI's ``APIRouter`` has dispatch rules of its own (included routers,
low-priority routes) and is not supported. Routes added later with
``app.add_route()`` are picked up (the index is rebuilt when the table's
length changes); replacing a route in place needs :meth:`IndexedRouter.reindex`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cachetools import LRUCache
from starlette.datastructures import URL
from starlette.responses import RedirectResponse
from starlette.routing import PARAM_REGEX, BaseRoute, Match, Mount, Route, Router, WebSocketRoute

from freightscale.types import Receive, Scope, Send

__all__ = ["IndexedRouter", "use_indexed_router"]


def _route_path(scope: Scope) -> str:
    # Same rule as Starlette's get_route_path: the path below root_path.
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    if path[len(root_path)] == "/":
        return path[len(root_path) :]
    return path


def _literal(route: BaseRoute) -> tuple[str, bool] | None:
    """Return (literal prefix, is_exact) of a route's path, or None if unknown."""
    if isinstance(route, Route | WebSocketRoute):
        source = route.path
    elif isinstance(route, Mount):
        source = route.path + "/{path:path}"
    else:
        return None
    match = PARAM_REGEX.search(source)
    if match is None:
        return source, True
    return source[: match.start()], False


class _Index:
    def __init__(self, routes: Sequence[BaseRoute], memo_size: int) -> None:
        self.size = len(routes)
        self.exact: dict[str, list[int]] = {}
        self.prefixed: dict[str, list[int]] = {}
        self.always: list[int] = []
        for position, route in enumerate(routes):
            literal = _literal(route)
            if literal is None:
                self.always.append(position)
            elif literal[1]:
                self.exact.setdefault(literal[0], []).append(position)
            else:
                self.prefixed.setdefault(literal[0], []).append(position)
        self.lengths = sorted({len(p) for p in self.prefixed})
        self.routes = list(routes)
        self.memo: LRUCache[str, tuple[BaseRoute, ...]] = LRUCache(memo_size)

    def candidates(self, path: str) -> tuple[BaseRoute, ...]:
        found = self.memo.get(path)
        if found is not None:
            return found
        positions = list(self.always)
        positions += self.exact.get(path, ())
        for length in self.lengths:
            if length > len(path):
                break
            bucket = self.prefixed.get(path[:length])
            if bucket:
                positions += bucket
        positions.sort()
        found = tuple(self.routes[p] for p in positions)
        self.memo[path] = found
        return found


class IndexedRouter(Router):
    """A Starlette ``Router`` that tries only the routes that can match.

    Accepts every argument of ``starlette.routing.Router``, plus
    ``memo_size``: how many recently seen paths keep their candidate list.
    """

    def __init__(self, *args: Any, memo_size: int = 4096, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._memo_size = memo_size
        self._index = _Index(self.routes, memo_size)

    def reindex(self) -> None:
        """Rebuild the index after routes were replaced in place."""
        self._index = _Index(self.routes, self._memo_size)

    def _candidates(self, path: str) -> tuple[BaseRoute, ...]:
        if self._index.size != len(self.routes):
            self.reindex()
        return self._index.candidates(path)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch like ``Router.app``, over the candidate routes only."""
        assert scope["type"] in ("http", "websocket", "lifespan")
        if "router" not in scope:
            scope["router"] = self
        if scope["type"] == "lifespan":
            await self.lifespan(scope, receive, send)
            return

        route_path = _route_path(scope)
        partial: BaseRoute | None = None
        partial_scope: Scope = {}
        for route in self._candidates(route_path):
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["route"] = route
                scope.update(child_scope)
                await route.handle(scope, receive, send)
                return
            if match is Match.PARTIAL and partial is None:
                partial, partial_scope = route, child_scope
        if partial is not None:
            scope["route"] = partial
            scope.update(partial_scope)
            await partial.handle(scope, receive, send)
            return

        if scope["type"] == "http" and self.redirect_slashes and route_path != "/":
            redirect_scope = dict(scope)
            if route_path.endswith("/"):
                redirect_scope["path"] = redirect_scope["path"].rstrip("/")
            else:
                redirect_scope["path"] = redirect_scope["path"] + "/"
            for route in self._candidates(_route_path(redirect_scope)):
                match, _ = route.matches(redirect_scope)
                if match is not Match.NONE:
                    response = RedirectResponse(url=str(URL(scope=redirect_scope)))
                    await response(scope, receive, send)
                    return

        await self.default(scope, receive, send)


def use_indexed_router(app: Any, *, memo_size: int = 4096) -> IndexedRouter:
    """Make the router of a Starlette ``app`` (or a bare ``Router``) an :class:`IndexedRouter`.

    The router is converted in place, keeping its routes, lifespan, default
    and router-level middleware. Call it after the routes are declared and
    before the app serves its first request. Returns the router.

    Raises:
        TypeError: when the router is not a plain Starlette ``Router``.
    """
    router = app if isinstance(app, Router) else getattr(app, "router", None)
    if isinstance(router, IndexedRouter):
        return router
    if type(router) is not Router:
        # FastAPI's APIRouter (and other subclasses) dispatch with logic of
        # their own (included routers, low-priority routes) that a plain
        # Starlette index cannot reproduce exactly, so they are refused.
        raise TypeError(
            f"use_indexed_router needs a plain starlette Router, got {type(router).__name__}; "
            "FastAPI's APIRouter is not supported"
        )
    old_dispatch = router.app
    router.__class__ = IndexedRouter
    assert isinstance(router, IndexedRouter)
    router._memo_size = memo_size
    router._index = _Index(router.routes, memo_size)
    # Router.__init__ bound its dispatch method into middleware_stack (maybe
    # under router-level middleware): point that chain at the indexed one.
    router.middleware_stack = _rebind(router.middleware_stack, old_dispatch, router.app)
    return router


def _rebind(stack: Any, old: Any, new: Any) -> Any:
    if stack == old:
        return new
    node = stack
    while (inner := getattr(node, "app", None)) is not None:
        if inner == old:
            node.app = new
            return stack
        node = inner
    raise TypeError("cannot find the router's dispatch inside its middleware stack")
