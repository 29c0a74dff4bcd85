"""Forwarding the ASGI lifespan to the wrapped app, one event at a time."""

from __future__ import annotations

import asyncio
import logging

from freightscale.types import ASGIApp, Message, Scope

__all__ = ["InnerLifespan"]

logger = logging.getLogger("freightscale.stack")


class InnerLifespan:
    """Runs the wrapped app's lifespan as a task, one event at a time.

    An app that returns or raises before answering startup does not support
    lifespan (the ASGI spec's rule); the stack then carries on without it.
    """

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self._app = app
        self._scope = scope
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Future[None] | None = None
        self._supported = True

    async def send_and_wait(self, event: str) -> str | None:
        """Deliver ``event``; return the app's failure message, or None on success."""
        if not self._supported:
            return None
        if self._task is None:
            self._task = asyncio.ensure_future(
                self._app(self._scope, self._inbox.get, self._outbox.put)
            )
            self._task.add_done_callback(_retrieve)
        await self._inbox.put({"type": event})
        reply = asyncio.ensure_future(self._outbox.get())
        await asyncio.wait((reply, self._task), return_when=asyncio.FIRST_COMPLETED)
        if reply.done():
            answer = reply.result()
            if answer["type"] == f"{event}.complete":
                return None
            return str(answer.get("message", "")) or f"{event} failed"
        reply.cancel()
        # The app ended without answering.
        error = None if self._task.cancelled() else self._task.exception()
        if event == "lifespan.startup":
            self._supported = False
            if error is not None:
                logger.info("the wrapped app does not support lifespan (%r); continuing", error)
            return None
        return repr(error) if error is not None else None


def _retrieve(task: asyncio.Future[None]) -> None:
    # The error (if any) is reported through the lifespan messages; this only
    # keeps asyncio from logging "exception was never retrieved".
    if not task.cancelled():
        task.exception()
