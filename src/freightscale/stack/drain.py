"""Graceful drain: readiness 503 first, in-flight requests finish, then the pools close.

The order on shutdown:

1. readiness (``/readyz``) answers 503 and stays so for ``drain_delay``
   seconds while the app still serves, so a load balancer takes the
   instance out of rotation before it stops accepting;
2. every HTTP/1.x response sent while draining carries ``Connection: close``,
   so keep-alive clients reconnect (to another instance);
3. lifespan shutdown waits up to ``grace_period`` for in-flight requests;
4. then the stack closes its shared resources.

Servers catch SIGTERM themselves and stop accepting at once, so step 1 must
happen *before* their handler runs. At lifespan startup :class:`Drain` puts
itself in front of the server's handler for SIGTERM and SIGINT: a handler
installed with ``signal.signal`` (uvicorn) is wrapped; one registered on the
event loop with ``loop.add_signal_handler`` (Granian's workers, on asyncio or
uvloop) is looked up and replaced. The first signal starts the drain and
hands the signal to the server's handler ``drain_delay`` seconds later; a
second one hands it over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from freightscale.health import HealthApp
from freightscale.settings.health import HealthSettings
from freightscale.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Drain"]

logger = logging.getLogger("freightscale.drain")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_CLOSE = (b"connection", b"close")


class Drain:
    """Counts in-flight requests and runs the drain for one :class:`~freightscale.stack.Stack`.

    Args:
        settings: the health section (``drain_on_signal``, ``drain_delay``,
            ``grace_period``).
        health: the health app whose readiness turns 503 while draining.
    """

    def __init__(self, settings: HealthSettings, health: HealthApp) -> None:
        self.settings = settings
        self.health = health
        self._inflight = 0
        self._idle: asyncio.Event | None = None
        self._began: float | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._signalled = False
        self._handed_over = False
        self._restore: list[Callable[[], None]] = []

    @property
    def inflight(self) -> int:
        """HTTP requests the stack is serving right now."""
        return self._inflight

    @property
    def draining(self) -> bool:
        """True once the drain began (readiness answers 503)."""
        return self.health.draining

    def start(self) -> None:
        """The lifespan-startup half: end a previous drain, then hook the signals.

        A stack started again after a shutdown (tests, embedded servers)
        serves as ready again.
        """
        self.remove_signal_handlers()
        if self._began is not None:
            self.health.set_draining(False)
        self._began = None
        self._signalled = self._handed_over = False
        self.install_signal_handlers()

    def begin(self) -> None:
        """Start draining now: readiness 503, ``Connection: close`` on responses (idempotent)."""
        if self._began is None:
            self._began = time.monotonic()
            self.health.set_draining(True)

    async def serve(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Run one HTTP request through ``app``, counted as in flight."""
        self._inflight += 1
        try:
            if scope.get("http_version", "1.1") in ("1.1", "1.0"):
                await app(scope, receive, self._closing(send))
            else:  # HTTP/2 and 3 forbid Connection; the server sends GOAWAY itself
                await app(scope, receive, send)
        finally:
            self._inflight -= 1
            if not self._inflight and self._idle is not None:
                self._idle.set()

    def _closing(self, send: Send) -> Send:
        health = self.health

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and health.draining:
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"connection"]
                headers.append(_CLOSE)
                message = {**message, "headers": headers}
            await send(message)

        return closing_send

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if ``timeout`` seconds pass first."""
        if not self._inflight:
            return True
        self._idle = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        finally:
            self._idle = None
        return True

    async def shutdown(self) -> None:
        """The lifespan-shutdown half: drain, hold ``drain_delay``, wait for in-flight requests.

        The delay counts from the start of the drain; after a hooked signal
        reached the server (the delay was held, or cut short by a second
        signal) it is not waited again.
        """
        self.remove_signal_handlers()
        self.begin()
        assert self._began is not None
        remaining = self.settings.drain_delay - (time.monotonic() - self._began)
        if remaining > 0 and not self._handed_over:
            await asyncio.sleep(remaining)
        if not await self.wait_idle(self.settings.grace_period):
            logger.warning(
                "%d request(s) still in flight after grace_period=%gs "
                "(FREIGHTSCALE_HEALTH__GRACE_PERIOD); closing the pools anyway",
                self._inflight,
                self.settings.grace_period,
            )

    # -- signals ---------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Put the drain in front of the server's SIGTERM / SIGINT handlers.

        Call it from the event loop, at lifespan startup. Does nothing when
        ``drain_on_signal`` is off, off the main thread (signals only reach
        it), or for a signal the server does not handle.
        """
        if not self.settings.drain_on_signal or self._restore:
            return
        if threading.current_thread() is not threading.main_thread():
            logger.info("not on the main thread: the drain starts at lifespan shutdown")
            return
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            current = signal.getsignal(sig)
            if _loop_managed(current, loop):
                registered = _loop_callback(loop, sig)
                if registered is None:
                    logger.warning(
                        "cannot find the event loop's %s handler; the drain starts at "
                        "lifespan shutdown instead",
                        sig.name,
                    )
                    continue
                loop.add_signal_handler(sig, self._on_signal, loop, registered)
                self._restore.append(_restore_loop(loop, sig, registered))
            elif callable(current) and current is not signal.default_int_handler:
                wrapped = _wrap_python_handler(self, loop, sig, current)
                signal.signal(sig, wrapped)
                self._restore.append(_restore_python(sig, wrapped, current))

    def remove_signal_handlers(self) -> None:
        """Give the signals back to the server's handlers; drop a pending hand-over."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        restore, self._restore = self._restore, []
        for undo in restore:
            with contextlib.suppress(ValueError, RuntimeError, OSError):  # loop/thread gone
                undo()

    def _on_signal(self, loop: asyncio.AbstractEventLoop, original: Callable[[], object]) -> None:
        if not self._signalled:
            self._signalled = True
            self.begin()  # or keep the drain that began earlier (e.g. an admin endpoint)
            assert self._began is not None
            remaining = max(0.0, self.settings.drain_delay - (time.monotonic() - self._began))
            logger.info(
                "shutdown signal: readiness reports 503 for %gs before the server stops accepting",
                remaining,
            )
            self._pending = loop.call_later(remaining, self._hand_over, original)
            return
        # A second signal: no more waiting.
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._hand_over(original)

    def _hand_over(self, original: Callable[[], object]) -> None:
        self._pending = None
        self._handed_over = True
        original()


def _loop_managed(handler: Any, loop: asyncio.AbstractEventLoop) -> bool:
    """True when ``handler`` is the stub an event loop installs for add_signal_handler."""
    # asyncio installs its module-level no-op; uvloop a bound method of the loop.
    return getattr(handler, "__name__", "") == "_sighandler_noop" or (
        getattr(handler, "__self__", None) is loop
    )


def _loop_callback(loop: asyncio.AbstractEventLoop, sig: int) -> _Registered | None:
    """The callback the loop runs for ``sig`` (asyncio or uvloop), bound to its args."""
    handlers = getattr(loop, "_signal_handlers", None)  # asyncio's unix loops
    if not isinstance(handlers, dict):
        # uvloop keeps the dict in a C attribute; the collector still sees it.
        handlers = next(
            (r for r in gc.get_referents(loop) if isinstance(r, dict) and _holds_handle(r, sig)),
            None,
        )
    handle = handlers.get(sig) if isinstance(handlers, dict) else None
    if handle is None:
        return None
    callback = getattr(handle, "_callback", None)
    args = getattr(handle, "_args", None)
    if callback is None:  # a uvloop Handle: (loop, context, callback, args, ...)
        referents = [r for r in gc.get_referents(handle) if r is not loop]
        callback = next((r for r in referents if callable(r)), None)
        args = next((r for r in referents if isinstance(r, tuple)), ())
    if callback is None:
        return None
    return _Registered(callback, tuple(args or ()))


@dataclass(frozen=True, slots=True)
class _Registered:
    """A loop-registered signal callback with its arguments."""

    callback: Callable[..., object]
    args: tuple[Any, ...]

    def __call__(self) -> object:
        return self.callback(*self.args)


def _holds_handle(candidate: dict[Any, Any], sig: int) -> bool:
    handle = candidate.get(sig)
    return handle is not None and type(handle).__name__ == "Handle"


def _restore_loop(
    loop: asyncio.AbstractEventLoop, sig: int, registered: _Registered
) -> Callable[[], None]:
    def undo() -> None:
        if not loop.is_closed():
            loop.add_signal_handler(sig, registered.callback, *registered.args)

    return undo


def _wrap_python_handler(
    drain: Drain, loop: asyncio.AbstractEventLoop, sig: int, original: Callable[..., Any]
) -> Callable[[int, Any], None]:
    def drain_first(signum: int, frame: Any) -> None:
        # A signal handler runs between two bytecodes of whatever the loop was
        # doing: hand the work to the loop instead of touching it from here.
        try:
            loop.call_soon_threadsafe(drain._on_signal, loop, lambda: original(signum, None))
        except RuntimeError:  # the loop is closed: no drain left to run
            original(signum, frame)

    return drain_first


def _restore_python(
    sig: int, wrapped: Callable[[int, Any], None], original: Callable[..., Any]
) -> Callable[[], None]:
    def undo() -> None:
        if signal.getsignal(sig) is wrapped:  # nobody replaced ours since
            signal.signal(sig, original)

    return undo
