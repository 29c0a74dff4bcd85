"""The session backend protocol, the record codec and the memory backend.

A session backend is not a plain key/value :class:`~freightscale.stores.Store`:
every stored session carries a **version**, and every write is a
compare-and-set on the server (:meth:`SessionBackend.compare_and_set`), so two
requests of one session can never silently overwrite each other. Version 0
means "absent": a CAS with ``version=0`` creates a session only if the id is
free, which is also how ids stay strict and how the legacy import stays
idempotent.

Records are JSON, never pickle: ``{"v": version, "e": expires_at, "d": data}``
with ``"v"`` first so the Redis CAS script can read it without decoding the
rest. ``"d": null`` is a tombstone: it blocks re-creation of the id (a
migrated or deleted legacy session is never resurrected by a re-run import)
and loads as "no session".
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson
from cachetools import TLRUCache

from freightscale.exceptions import StoreError

__all__ = [
    "CasResult",
    "CorruptSessionError",
    "MemorySessionBackend",
    "SessionBackend",
    "SessionRecord",
    "decode_record",
    "encode_record",
]

SessionData = dict[str, Any]


class CorruptSessionError(StoreError):
    """A stored session is not valid JSON or does not have the record shape."""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One stored session.

    Attributes:
        data: the session's key/value data; None for a tombstone.
        version: incremented by every write (>= 1 once stored).
        expires_at: Unix time at which the session ends.
    """

    data: SessionData | None
    version: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class CasResult:
    """Outcome of :meth:`SessionBackend.compare_and_set`.

    Attributes:
        ok: True if the write happened.
        current: on success the record now stored; on a conflict the record
            that won (None if the session no longer exists).
    """

    ok: bool
    current: SessionRecord | None


@runtime_checkable
class SessionBackend(Protocol):
    """Where sessions live. Memory, Redis and PostgreSQL pass one behaviour suite."""

    async def load(self, session_id: str) -> SessionRecord | None:
        """Return the live record of ``session_id``; None if absent, expired or a tombstone.

        Raises:
            CorruptSessionError: the stored value is not a valid record.
            StoreUnavailableError: the backend is down.
        """
        ...

    async def compare_and_set(
        self, session_id: str, data: SessionData | None, expires_at: float, *, version: int
    ) -> CasResult:
        """Write ``data`` (None: a tombstone) as version ``version + 1`` if the
        stored version is ``version`` (0: only if absent). Atomic on the server."""
        ...

    async def delete(self, session_id: str) -> None:
        """Remove ``session_id`` (no error if absent)."""
        ...

    async def import_many(self, items: Sequence[tuple[str, SessionData, float]]) -> list[bool]:
        """Create each ``(id, data, expires_at)`` if its id is free; return which were created."""
        ...

    async def check(self) -> None:
        """Raise StoreUnavailableError if the backend is down."""
        ...

    async def aclose(self) -> None:
        """Stop background tasks and release connections."""
        ...


def encode_record(data: SessionData | None, version: int, expires_at: float) -> bytes:
    """Serialize a record; ``"v"`` comes first (the Redis CAS script relies on it)."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return f'{{"v":{int(version)},"e":{expires_at!r},"d":{body}}}'.encode()


def decode_record(raw: bytes | str) -> SessionRecord:
    """Parse a stored record.

    Raises:
        CorruptSessionError: for invalid JSON or a wrong shape.
    """
    try:
        try:
            value = orjson.loads(raw)  # several times faster than json, on every session read
        except orjson.JSONDecodeError:
            # orjson is stricter (integers beyond 64 bits, NaN, a BOM, lone
            # surrogates): what the standard library accepts stays readable.
            value = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError is a ValueError)
        raise CorruptSessionError(f"stored session is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CorruptSessionError(f"stored session is a {type(value).__name__}, not an object")
    version, expires_at, data = value.get("v"), value.get("e"), value.get("d", ...)
    if type(version) is not int or version < 1:
        raise CorruptSessionError(f"stored session has a bad version {version!r}")
    if not isinstance(expires_at, int | float) or isinstance(expires_at, bool):
        raise CorruptSessionError(f"stored session has a bad expiry {expires_at!r}")
    if data is not None and not isinstance(data, dict):
        raise CorruptSessionError("stored session data is not an object")
    return SessionRecord(data, version, float(expires_at))


async def import_concurrently(
    backend: SessionBackend, items: Sequence[tuple[str, SessionData, float]], limit: int = 64
) -> list[bool]:
    """Create-if-absent each item with at most ``limit`` writes in flight."""
    results: list[bool] = []
    for start in range(0, len(items), limit):
        chunk = items[start : start + limit]
        outcomes = await asyncio.gather(
            *(backend.compare_and_set(sid, data, exp, version=0) for sid, data, exp in chunk)
        )
        results.extend(outcome.ok for outcome in outcomes)
    return results


def _ttu(_key: str, value: bytes, _now: float) -> float:
    return _expiry_of(value)


def _expiry_of(value: bytes) -> float:
    # Cheap: the record's "e" field, without decoding the whole record.
    head = value[:64]
    try:
        start = head.index(b'"e":') + 4
        return float(head[start : head.index(b",", start)])
    except ValueError:
        return math.inf  # a corrupt entry: kept until evicted, reported on load


class MemorySessionBackend:
    """Bounded in-process sessions (tests, one-process apps, the embedded default).

    Records are stored encoded, exactly as Redis stores them, so handlers
    never share mutable dicts and a non-JSON value fails here too. Operations
    never await, so each is atomic within the event loop.

    Args:
        max_entries: most sessions kept (least recently used evicted first).
        clock: wall clock in Unix seconds; tests inject a manual one.
    """

    def __init__(
        self, max_entries: int = 10_000, *, clock: Callable[[], float] = time.time
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._clock = clock
        self._data: TLRUCache[str, bytes] = TLRUCache(max_entries, _ttu, timer=clock)

    def __repr__(self) -> str:
        return f"MemorySessionBackend(entries={len(self._data)})"

    def _raw(self, session_id: str) -> bytes | None:
        raw = self._data.get(session_id)
        if raw is None or _expiry_of(raw) <= self._clock():
            return None
        return raw

    async def load(self, session_id: str) -> SessionRecord | None:
        """Return the live record, or None."""
        raw = self._raw(session_id)
        if raw is None:
            return None
        record = decode_record(raw)
        return record if record.data is not None else None

    async def compare_and_set(
        self, session_id: str, data: SessionData | None, expires_at: float, *, version: int
    ) -> CasResult:
        """Compare-and-set (see :class:`SessionBackend`)."""
        raw = self._raw(session_id)
        current = decode_record(raw) if raw is not None else None
        if (current.version if current else 0) != version:
            return CasResult(False, current)
        encoded = encode_record(data, version + 1, expires_at)
        if not math.isfinite(expires_at) or expires_at <= self._clock():
            self._data.pop(session_id, None)
        else:
            self._data[session_id] = encoded
        return CasResult(True, SessionRecord(data, version + 1, expires_at))

    def _set_raw(self, session_id: str, raw: bytes) -> None:
        """Store raw bytes (tests use it to plant corrupt entries)."""
        self._data[session_id] = raw

    async def delete(self, session_id: str) -> None:
        """Remove ``session_id``."""
        self._data.pop(session_id, None)

    async def import_many(self, items: Sequence[tuple[str, SessionData, float]]) -> list[bool]:
        """Create-if-absent each item."""
        return await import_concurrently(self, items)

    async def check(self) -> None:
        """Always healthy."""

    async def aclose(self) -> None:
        """Nothing to release."""
