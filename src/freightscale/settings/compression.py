"""Settings of response compression."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from freightscale.settings._base import Section

__all__ = ["DEFAULT_COMPRESSIBLE_TYPES", "CompressionSettings", "Encoding"]

Encoding = Literal["br", "gzip", "zstd"]
"""A content coding the middleware can produce."""

DEFAULT_COMPRESSIBLE_TYPES: tuple[str, ...] = (
    "text/",
    "application/json",
    "application/problem+json",
    "application/javascript",
    "application/ecmascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/ld+json",
    "application/geo+json",
    "application/graphql-response+json",
    "application/x-ndjson",
    "application/wasm",
    "image/svg+xml",
    "image/x-icon",
    "font/ttf",
    "font/otf",
)


class CompressionSettings(Section):
    """Brotli / gzip / zstd negotiation and quality levels.

    The on-the-fly levels are used for every response compressed per request;
    the ``cached_*`` levels for responses the response cache is about to
    store, whose compression is paid once and served many times. Defaults
    were measured on a 18 KB JSON body on this project's 2-core machine:
    brotli 4 ≈ 190 µs → 1.9 KB, brotli 6 ≈ 260 µs → 1.7 KB, brotli 11 ≈ 40 ms
    → 1.4 KB; gzip 6 ≈ 170 µs → 2.0 KB, gzip 9 ≈ 500 µs → 1.8 KB; zstd 3 ≈
    55 µs → 2.0 KB (see docs/compression.md).
    """

    enabled: bool = False
    """Install the compression middleware in ``build_stack``."""

    minimum_size: int = Field(default=500, ge=0, le=10_485_760)
    """Bodies smaller than this many bytes are sent uncompressed."""

    encodings: tuple[Encoding, ...] = Field(default=("br", "zstd", "gzip"), min_length=1)
    """Codings offered, in server preference order (breaks q-value ties). ``zstd`` is
    used only when the ``zstandard`` package is installed (``freightscale[zstd]``)."""

    brotli_quality: int = Field(default=4, ge=0, le=11)
    """Brotli quality for bodies compressed on the fly."""

    gzip_level: int = Field(default=6, ge=1, le=9)
    """Gzip level for bodies compressed on the fly (9 costs ~3x the CPU for ~9 % fewer bytes)."""

    zstd_level: int = Field(default=3, ge=1, le=22)
    """Zstandard level for bodies compressed on the fly."""

    cached_brotli_quality: int = Field(default=6, ge=0, le=11)
    """Brotli quality for bodies the response cache will store (paid once per miss).
    Qualities 9 and above block the event loop for milliseconds per 20 KB."""

    cached_gzip_level: int = Field(default=9, ge=1, le=9)
    """Gzip level for bodies the response cache will store."""

    cached_zstd_level: int = Field(default=9, ge=1, le=22)
    """Zstandard level for bodies the response cache will store."""

    compressible_types: tuple[str, ...] = Field(
        default=DEFAULT_COMPRESSIBLE_TYPES, min_length=1, max_length=200
    )
    """Media types compressed; an entry ending in ``/`` is a prefix (``text/``).
    Images, archives, video and already-encoded bodies are never compressed."""

    compress_event_streams: bool = True
    """Compress ``text/event-stream`` responses, flushing after every event so
    each one still reaches the client at once."""
