"""The stored form of a cached response: final bytes, compactly framed.

An entry is the status, the final header list and the body exactly as sent
(compressed variants included), framed with ``struct`` — never pickle, and
no JSON round trip of the body. A hit slices the body out and sends it.

Layout (big-endian)::

    b"FSR1" | status u16 | stored_at f64 | fresh_until f64 | swr_until f64
    | sie_until f64 | header count u16 | (name len u16, value len u32, name, value)*
    | body
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["CacheEntry", "CorruptEntry", "decode_entry", "encode_entry"]

_MAGIC = b"FSR1"
_HEAD = struct.Struct(">4sHddddH")
_PAIR = struct.Struct(">HI")
_MAX_HEADERS = 256


class CorruptEntry(ValueError):
    """Stored bytes are not a valid entry (treated as a miss, never a 500)."""


@dataclass(slots=True)
class CacheEntry:
    """One cached response.

    Attributes:
        status: HTTP status.
        headers: the final response headers (lowercase names), without ``Age``/``X-Cache``.
        body: the body bytes exactly as sent (possibly compressed).
        stored_at: wall-clock time the response was produced.
        fresh_until: wall-clock end of freshness.
        swr_until: end of the stale-while-revalidate window.
        sie_until: end of the stale-if-error window.
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stored_at: float
    fresh_until: float
    swr_until: float
    sie_until: float

    def header(self, name: bytes) -> bytes | None:
        """Return the first value of header ``name`` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


def encode_entry(entry: CacheEntry) -> bytes:
    """Frame ``entry`` as bytes."""
    parts = [
        _HEAD.pack(
            _MAGIC,
            entry.status,
            entry.stored_at,
            entry.fresh_until,
            entry.swr_until,
            entry.sie_until,
            len(entry.headers),
        )
    ]
    for name, value in entry.headers:
        parts.append(_PAIR.pack(len(name), len(value)))
        parts.append(name)
        parts.append(value)
    parts.append(entry.body)
    return b"".join(parts)


def decode_entry(data: bytes) -> CacheEntry:
    """Parse bytes written by :func:`encode_entry`.

    Raises:
        CorruptEntry: when ``data`` is truncated or not an entry.
    """
    try:
        magic, status, stored, fresh, swr, sie, count = _HEAD.unpack_from(data, 0)
        if magic != _MAGIC or count > _MAX_HEADERS:
            raise CorruptEntry("not a freightscale cache entry")
        offset = _HEAD.size
        headers: list[tuple[bytes, bytes]] = []
        for _ in range(count):
            name_len, value_len = _PAIR.unpack_from(data, offset)
            offset += _PAIR.size
            end = offset + name_len + value_len
            if end > len(data):
                raise CorruptEntry("truncated cache entry")
            headers.append((data[offset : offset + name_len], data[offset + name_len : end]))
            offset = end
    except struct.error as exc:
        raise CorruptEntry("truncated cache entry") from exc
    return CacheEntry(status, headers, data[offset:], stored, fresh, swr, sie)
