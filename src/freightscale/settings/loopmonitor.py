"""Settings of the event-loop lag monitor."""

from __future__ import annotations

from pydantic import Field

from freightscale.settings._base import Section

__all__ = ["LoopMonitorSettings"]


class LoopMonitorSettings(Section):
    """Measure event-loop lag; log what blocked the loop when it stalls."""

    enabled: bool = False
    """Run the monitor (a probe task on the loop plus one watchdog thread)."""

    probe_interval: float = Field(default=0.5, ge=0.01, le=60.0)
    """Seconds between probes. Each probe sleeps this long and records how late
    it woke up in the ``freightscale.loop.lag`` histogram."""

    lag_threshold: float = Field(default=0.1, ge=0.005, le=60.0)
    """A probe later than this many seconds counts as a stall: the watchdog
    thread logs one warning (rate-limited by ``log_interval``)."""

    log_interval: float = Field(default=60.0, ge=0.0, le=86_400.0)
    """At most one stall warning per this many seconds; stalls in between are
    counted and the count is reported in the next warning. ``0`` logs every
    stall."""

    sample_stack: bool = True
    """Include in the warning the stack of what ran on the loop thread,
    sampled by the watchdog thread while the loop is stuck."""

    stack_limit: int = Field(default=30, ge=1, le=500)
    """Most frames of the sampled stack shown (the innermost ones)."""
