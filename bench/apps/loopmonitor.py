"""Loop-lag monitor variants for ``bench/run.py`` (a real server starts it via lifespan)."""

from __future__ import annotations

from bench.apps.core import make_app
from freightscale.loopmonitor import LoopMonitorMiddleware
from freightscale.settings.loopmonitor import LoopMonitorSettings

PATH = "/json"

loopmonitor_off = LoopMonitorMiddleware(make_app(), LoopMonitorSettings())
loopmonitor_on = LoopMonitorMiddleware(make_app(), LoopMonitorSettings(enabled=True))
loopmonitor_on_10ms = LoopMonitorMiddleware(
    make_app(), LoopMonitorSettings(enabled=True, probe_interval=0.01)
)

VARIANTS = {
    "loopmonitor-off": "loopmonitor_off",
    "loopmonitor-on": "loopmonitor_on",
    "loopmonitor-on-10ms": "loopmonitor_on_10ms",
}
