"""Settings of request-body decompression."""

from __future__ import annotations

from pydantic import Field

from freightscale.settings._base import Section

__all__ = ["DecompressionSettings"]


class DecompressionSettings(Section):
    """Accept compressed request bodies, refuse decompression bombs."""

    enabled: bool = False
    """Install the request-decompression middleware in ``build_stack``."""

    max_size: int = Field(default=10 * 1024 * 1024, ge=1024, le=4 * 1024**3)
    """Most bytes a request body may expand to; beyond it the request gets 413."""

    max_ratio: float = Field(default=200.0, ge=2.0, le=100_000.0)
    """Largest decompressed/compressed size ratio accepted once the body
    exceeds ``ratio_floor`` bytes (a bomb has a ratio in the thousands)."""

    ratio_floor: int = Field(default=1024 * 1024, ge=0, le=1024**3)
    """Bodies smaller than this many decompressed bytes are exempt from the
    ratio check (small, highly repetitive JSON legitimately compresses well)."""

    encodings: list[str] = Field(default_factory=lambda: ["gzip", "deflate", "br", "zstd"])
    """Content-Encodings accepted; anything else gets 415. ``zstd`` needs the
    ``zstandard`` package (``pip install 'freightscale[zstd]'``)."""
