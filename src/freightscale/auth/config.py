"""Configuration of ``freightscale.auth``: the :class:`AuthSettings` section.

The settings live in :mod:`freightscale.settings.auth` (one section of
``FreightScaleSettings``, read from ``FREIGHTSCALE_AUTH__*``); this module
re-exports them next to the code that uses them.
"""

from __future__ import annotations

from freightscale.settings.auth import HMAC_ALGORITHMS, SUPPORTED_ALGORITHMS, AuthSettings

__all__ = ["HMAC_ALGORITHMS", "SUPPORTED_ALGORITHMS", "AuthSettings"]
