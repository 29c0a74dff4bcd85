"""Tiny apps the session tests drive (Starlette, FastAPI, bare ASGI)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.sessions import SessionTooLargeError, load_session


async def plain(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def get(request: Request) -> JSONResponse:
    session = await load_session(request)
    return JSONResponse({"data": dict(session), "id": session.id})


async def set_(request: Request) -> JSONResponse:
    session = await load_session(request)
    for key, value in request.query_params.items():
        session[key] = value
    return JSONResponse({"data": dict(session)})


async def slow_set(request: Request) -> JSONResponse:
    """Load, wait (so two requests overlap), then write one key."""
    session = await load_session(request)
    await asyncio.sleep(float(request.query_params.get("wait", "0.2")))
    session[request.query_params["key"]] = request.query_params["value"]
    return JSONResponse({"data": dict(session)})


async def login(request: Request) -> JSONResponse:
    session = await load_session(request)
    session["user"] = request.query_params.get("user", "alice")
    session.regenerate()
    return JSONResponse({"ok": True})


async def logout(request: Request) -> JSONResponse:
    session = await load_session(request)
    session.clear()
    return JSONResponse({"ok": True})


async def sync_read(request: Request) -> JSONResponse:
    # Plain Starlette style: works when the path is eager (or there is no cookie).
    return JSONResponse({"data": dict(request.session)})


async def big(request: Request) -> JSONResponse:
    session = await load_session(request)
    try:
        session["blob"] = "x" * int(request.query_params.get("n", "100000"))
    except SessionTooLargeError as exc:
        return JSONResponse({"error": str(exc)}, status_code=413)
    return JSONResponse({"ok": True})


async def nested(request: Request) -> JSONResponse:
    session = await load_session(request)
    session.setdefault("cart", [])
    cart: list[Any] = session["cart"]
    cart.append(request.query_params.get("item", "x"))  # mutation without __setitem__
    return JSONResponse({"cart": cart})


routes = [
    Route("/plain", plain),
    Route("/get", get),
    Route("/set", set_),
    Route("/slow-set", slow_set),
    Route("/login", login),
    Route("/logout", logout),
    Route("/sync", sync_read),
    Route("/account/sync", sync_read),
    Route("/big", big),
    Route("/nested", nested),
]


def starlette_app() -> Starlette:
    return Starlette(routes=routes)
