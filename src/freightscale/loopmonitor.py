"""Event-loop lag monitor: a histogram of how late the loop runs, and who blocked it.

A blocked event loop is the quietest way an async server falls over: one
``time.sleep``, one synchronous driver call or one huge ``json.dumps`` in a
handler and every other request on that worker waits. :class:`LoopLagMonitor`
makes that visible in production at near-zero cost:

* a **probe** task on the loop sleeps ``probe_interval`` and records how late
  it woke up in the OpenTelemetry histogram ``freightscale.loop.lag``
  (unit ``s``) — one timer and one ``record()`` per interval;
* a **watchdog** thread wakes when the probe is due; if the probe is later
  than ``lag_threshold`` while the loop is still stuck, it samples the loop
  thread's stack with :func:`sys._current_frames` and logs **one** warning
  (at most one per ``log_interval``; the stalls in between are counted).

The warning is written from the watchdog thread, so the monitor itself never
does I/O on the loop. Stalls shorter than the threshold plus one watchdog tick
may end before the watchdog looks: they are in the histogram but not logged.

Use it from an ASGI lifespan (:class:`LoopMonitorMiddleware` does that) or by
hand::

    monitor = LoopLagMonitor(LoopMonitorSettings(enabled=True))
    monitor.start()           # from within the running loop
    ...
    await monitor.aclose()    # or: async with LoopLagMonitor(...):
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType

from opentelemetry import metrics

from freightscale.settings.loopmonitor import LoopMonitorSettings
from freightscale.telemetry import INSTRUMENTATION_NAME
from freightscale.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LAG_BUCKETS", "LAG_METRIC", "LoopLagMonitor", "LoopMonitorMiddleware"]

LAG_METRIC = "freightscale.loop.lag"
"""Name of the histogram of probe lateness, in seconds."""

LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Bucket boundaries (seconds) advised to the SDK for :data:`LAG_METRIC`."""

_WATCHDOG_NAME = "freightscale-loop-watchdog"
_JOIN_TIMEOUT = 5.0

logger = logging.getLogger(__name__)


class _LogLimiter:
    """At most one log line per ``interval`` seconds; counts what it holds back."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next = -math.inf
        self._held = 0

    def allow(self) -> int | None:
        """Return how many events were held back since the last allowed one, or ``None``."""
        now = self._clock()
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self.interval
        return held


class _Run:
    """State of one started monitor: its loop, probe task and watchdog thread.

    The probe (loop thread) and the watchdog (helper thread) share one float,
    ``due``: when the probe expects to wake next. Assigning a float is atomic,
    so the loop thread never takes a lock the watchdog could hold.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.loop_thread_id = threading.get_ident()
        self.due = math.inf
        self.stop = threading.Event()
        self.task: asyncio.Task[None] | None = None
        self.thread: threading.Thread | None = None

    def stop_watchdog(self) -> None:
        """Stop the watchdog and wait for it (blocking: call it off the loop)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(_JOIN_TIMEOUT)


class LoopLagMonitor:
    """Measure event-loop lag; log the loop's stack when it stalls.

    Args:
        settings: the monitor's settings; a disabled monitor's
            :meth:`start` does nothing.
        meter_provider: OpenTelemetry meter provider for the histogram
            (default: the global one; without an SDK recording is a no-op).
        log: logger for stall warnings (default ``freightscale.loopmonitor``).
        clock: monotonic clock of the log rate limit (tests inject one).
    """

    def __init__(
        self,
        settings: LoopMonitorSettings | None = None,
        *,
        meter_provider: metrics.MeterProvider | None = None,
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings if settings is not None else LoopMonitorSettings()
        meter = metrics.get_meter(INSTRUMENTATION_NAME, meter_provider=meter_provider)
        self._histogram = meter.create_histogram(
            LAG_METRIC,
            unit="s",
            description="How late the event loop ran a timer (probe lateness).",
            explicit_bucket_boundaries_advisory=list(LAG_BUCKETS),
        )
        self._log = log if log is not None else logger
        self._limiter = _LogLimiter(self.settings.log_interval, clock)
        self._run: _Run | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}({state}, enabled={self.settings.enabled})"

    @property
    def running(self) -> bool:
        """Whether the probe task is alive (on a loop that is not closed)."""
        run = self._run
        return (
            run is not None
            and run.task is not None
            and not run.task.done()
            and not run.loop.is_closed()
        )

    def start(self) -> None:
        """Start probing the running event loop (idempotent; no-op when disabled).

        Call it from the loop it should watch, e.g. in the lifespan startup.
        A monitor whose previous loop has ended may be started again.

        Raises:
            RuntimeError: when no event loop is running in this thread.
        """
        if not self.settings.enabled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "LoopLagMonitor.start() must be called from the running event loop it "
                "should watch (e.g. in the ASGI lifespan startup)"
            ) from None
        if self.running:
            return
        run = _Run(loop)
        run.due = time.monotonic() + self.settings.probe_interval
        run.task = loop.create_task(self._probe(run), name="freightscale-loop-probe")
        run.thread = threading.Thread(
            target=self._watch, args=(run,), name=_WATCHDOG_NAME, daemon=True
        )
        run.thread.start()
        self._run = run

    async def aclose(self) -> None:
        """Stop the probe and the watchdog; waits for both (idempotent)."""
        run, self._run = self._run, None
        if run is None:
            return
        task = run.task
        if task is not None and not task.done():
            if task.get_loop() is asyncio.get_running_loop():
                task.cancel()
                # wait() does not re-raise the task's CancelledError, so a
                # cancellation of aclose() itself still propagates.
                await asyncio.wait([task])
            elif not run.loop.is_closed():
                run.loop.call_soon_threadsafe(task.cancel)
        # Event.set() and join() take locks the watchdog may hold: off the loop.
        await asyncio.to_thread(run.stop_watchdog)

    async def __aenter__(self) -> LoopLagMonitor:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _probe(self, run: _Run) -> None:
        interval = self.settings.probe_interval
        clock = time.monotonic
        record = self._histogram.record
        try:
            while True:
                await asyncio.sleep(interval)
                now = clock()
                lag = now - run.due
                run.due = now + interval
                record(lag if lag > 0.0 else 0.0)
        finally:
            # The probe is gone (aclose, or the loop shut down): the watchdog exits.
            # A plain assignment: no lock is taken on the loop thread.
            run.due = math.inf

    def _watch(self, run: _Run) -> None:
        """Watchdog thread: report a probe that is late while the loop is still stuck."""
        threshold = self.settings.lag_threshold
        tick = min(threshold, self.settings.probe_interval)
        reported = math.nan  # the ``due`` of the stall already reported
        while not run.stop.is_set():
            due = run.due
            if due == math.inf:
                return
            late = time.monotonic() - due
            if late < threshold:
                run.stop.wait(threshold - late)  # until the probe would be late
                continue
            if due != reported and run.loop.is_running():
                reported = due
                self._report(run, late)
            if run.loop.is_closed():
                break
            run.stop.wait(tick)

    def _report(self, run: _Run, late: float) -> None:
        held = self._limiter.allow()
        if held is None:
            return
        stack = ""
        if self.settings.sample_stack:
            frame = sys._current_frames().get(run.loop_thread_id)
            if frame is not None:
                try:
                    lines = traceback.format_stack(frame, limit=self.settings.stack_limit)
                finally:
                    del frame
                stack = "; loop thread stack (most recent call last):\n" + "".join(lines)
        self._log.warning(
            "event loop blocked: the lag probe is %.3f s overdue and the loop is still "
            "busy (threshold %.3f s)%s%s",
            late,
            self.settings.lag_threshold,
            f"; {held} more stall(s) since the last warning" if held else "",
            stack.rstrip("\n"),
        )


class LoopMonitorMiddleware:
    """Run a :class:`LoopLagMonitor` for the app's lifetime (pure ASGI).

    Starts the monitor when the server sends ``lifespan.startup`` and closes
    it before ``lifespan.shutdown.complete`` goes out. Under a server that
    runs no lifespan, the first request starts it. Requests pass through
    untouched; a disabled monitor adds one attribute check per request.

    Args:
        app: the ASGI app to wrap.
        settings: the monitor's settings.
        monitor: an existing monitor to drive instead (then ``settings`` and
            ``meter_provider`` are ignored).
        meter_provider: OpenTelemetry meter provider for the histogram.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: LoopMonitorSettings | None = None,
        *,
        monitor: LoopLagMonitor | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.app = app
        self.monitor = (
            monitor
            if monitor is not None
            else LoopLagMonitor(settings, meter_provider=meter_provider)
        )
        self._enabled = self.monitor.settings.enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            if self._enabled and not self.monitor.running:
                self.monitor.start()
            await self.app(scope, receive, send)
            return
        monitor = self.monitor

        async def receive_startup() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                monitor.start()
            return message

        async def send_shutdown(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await monitor.aclose()
            await send(message)

        try:
            await self.app(scope, receive_startup, send_shutdown)
        finally:
            await monitor.aclose()
