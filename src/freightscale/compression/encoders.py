"""Streaming and one-shot encoders for brotli, gzip and zstd.

A streaming encoder turns each chunk into compressed bytes that are
*flushed*: everything given so far can be decoded from what was returned,
so a streamed response (server-sent events, a long report) reaches the
client chunk by chunk instead of waiting in the compressor's buffer.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli

__all__ = ["Encoder", "available_encodings", "compress", "new_encoder", "zstd_available"]

try:  # optional: pip install 'freightscale[zstd]'
    import zstandard as _zstd
except ImportError:  # pragma: no cover - exercised by the minimal-install session
    _zstd = None  # type: ignore[assignment]


def zstd_available() -> bool:
    """True when the ``zstandard`` package is importable."""
    return _zstd is not None


def available_encodings(wanted: tuple[str, ...]) -> tuple[str, ...]:
    """Return ``wanted`` without the codings this installation cannot produce."""
    return tuple(e for e in wanted if e != "zstd" or _zstd is not None)


class Encoder(Protocol):
    """A streaming compressor for one response body."""

    def compress(self, chunk: bytes) -> bytes:
        """Compress ``chunk`` and flush, so the output decodes up to here."""
        ...

    def finish(self) -> bytes:
        """Return the end of the compressed stream."""
        ...


class _Gzip:
    def __init__(self, level: int) -> None:
        self._obj = zlib.compressobj(level, zlib.DEFLATED, 31)

    def compress(self, chunk: bytes) -> bytes:
        return self._obj.compress(chunk) + self._obj.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._obj.flush(zlib.Z_FINISH)


class _Brotli:
    def __init__(self, quality: int) -> None:
        self._obj = brotli.Compressor(quality=quality)

    def compress(self, chunk: bytes) -> bytes:
        out: bytes = self._obj.process(chunk) + self._obj.flush()
        return out

    def finish(self) -> bytes:
        out: bytes = self._obj.finish()
        return out


class _Zstd:
    def __init__(self, level: int) -> None:
        assert _zstd is not None
        self._obj = _zstd.ZstdCompressor(level=level).compressobj()
        self._flush_block = _zstd.COMPRESSOBJ_FLUSH_BLOCK

    def compress(self, chunk: bytes) -> bytes:
        out: bytes = self._obj.compress(chunk) + self._obj.flush(self._flush_block)
        return out

    def finish(self) -> bytes:
        out: bytes = self._obj.flush()
        return out


def new_encoder(encoding: str, level: int) -> Encoder:
    """Return a streaming encoder for ``encoding`` (``br``, ``gzip`` or ``zstd``)."""
    if encoding == "br":
        return _Brotli(level)
    if encoding == "gzip":
        return _Gzip(level)
    if encoding == "zstd" and _zstd is not None:
        return _Zstd(level)
    raise ValueError(f"cannot encode {encoding!r}")


_zstd_compressors: dict[int, object] = {}


def compress(encoding: str, body: bytes, level: int) -> bytes:
    """Compress a whole body in one call (faster than the streaming path)."""
    if encoding == "br":
        out: bytes = brotli.compress(body, quality=level)
        return out
    if encoding == "gzip":
        return zlib.compress(body, level, wbits=31)  # gzip container, no extra copy
    if encoding == "zstd" and _zstd is not None:
        # ZstdCompressor objects are reusable but not thread-safe; the event
        # loop thread is the only user.
        comp = _zstd_compressors.get(level)
        if comp is None:
            comp = _zstd_compressors[level] = _zstd.ZstdCompressor(level=level)
        result: bytes = comp.compress(body)  # type: ignore[attr-defined]
        return result
    raise ValueError(f"cannot encode {encoding!r}")
