"""Module-level objects shared by the session middleware and its per-request responder.

Created once, at import: the request path only bumps counters it already holds.
"""

from __future__ import annotations

import logging

from freightscale.telemetry import get_counter

logger = logging.getLogger("freightscale.sessions")
# Names, units and labels are registered in freightscale.telemetry.instruments.
_loads = get_counter("freightscale.sessions.loads")  # result: hit, miss, invalid, error
_saves = get_counter("freightscale.sessions.saves")  # result: saved, deleted, conflict, error
_outages = get_counter("freightscale.backend.outages")  # service, component
_fallbacks = get_counter("freightscale.backend.fallbacks")  # component, policy
_HITS, _MISSES = _loads.series({"result": "hit"}), _loads.series({"result": "miss"})

LEGACY_PREFIX = "legacy:"
"""Imported legacy sessions live under ``legacy:<sid>``; freightscale ids never contain ``:``."""

Header = tuple[bytes, bytes]
