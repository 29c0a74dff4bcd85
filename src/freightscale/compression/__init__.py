"""Response compression: brotli, gzip and zstd, negotiated and streaming-safe.

::

    from freightscale.compression import CompressionMiddleware
    app = CompressionMiddleware(app, CompressionSettings(minimum_size=500))
"""

from __future__ import annotations

from freightscale.compression.encoders import available_encodings, compress, new_encoder
from freightscale.compression.middleware import CACHE_FILL_KEY, CompressionMiddleware
from freightscale.compression.negotiation import negotiate, parse_accept_encoding
from freightscale.compression.static import PrecompressedStaticFiles

__all__ = [
    "CACHE_FILL_KEY",
    "CompressionMiddleware",
    "PrecompressedStaticFiles",
    "available_encodings",
    "compress",
    "negotiate",
    "new_encoder",
    "parse_accept_encoding",
]
