"""Settings of response compression."""

from __future__ import annotations

from pydantic import Field

from freightscale.settings._base import Section

__all__ = ["CompressionSettings"]


class CompressionSettings(Section):
    """Brotli / gzip negotiation and quality levels."""

    enabled: bool = False
    """Install the compression middleware in ``build_stack``."""

    minimum_size: int = Field(default=500, ge=0, le=10_485_760)
    """Bodies smaller than this many bytes are sent uncompressed."""

    brotli_quality: int = Field(default=4, ge=0, le=11)
    """Brotli quality for bodies compressed on the fly."""

    gzip_level: int = Field(default=6, ge=1, le=9)
    """Gzip level for bodies compressed on the fly."""
