"""The one key/value ``Store`` protocol shared by every component.

Sessions, the response cache, revocation lists and permission caches keep
their shared state behind it. Values are bytes in, bytes out: each feature
serializes its own (JSON or msgpack, never pickle). ``with_namespace()``
returns a view whose keys cannot collide with another namespace's, and
``delete_all()`` clears only the view's namespace.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["Store", "join_namespace", "store_bytes"]


@runtime_checkable
class Store(Protocol):
    """Async key/value store with expiry, atomic counters and namespaces.

    Every implementation passes the same contract test suite
    (``tests/stores/test_contract.py``) against its real backend.
    """

    namespace: str
    """The key namespace of this view ("" for the root)."""

    async def get(self, key: str) -> bytes | None:
        """Return the value under ``key``, or None if absent or expired."""
        ...

    async def set(self, key: str, value: bytes, *, expires_in: float | None = None) -> None:
        """Store ``value`` under ``key``, expiring after ``expires_in`` seconds (None: never)."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove ``key``; return True if it existed."""
        ...

    async def exists(self, key: str) -> bool:
        """Return True if ``key`` holds an unexpired value."""
        ...

    async def expires_in(self, key: str) -> float | None:
        """Seconds until ``key`` expires; None if it is absent or never expires."""
        ...

    async def incr(self, key: str, amount: int = 1, *, expires_in: float | None = None) -> int:
        """Atomically add ``amount`` to the integer under ``key`` and return the result.

        A missing key counts from 0. ``expires_in`` is applied only when the
        key is created, so a counter's window does not slide with each call.
        """
        ...

    async def delete_all(self) -> None:
        """Remove every key of this namespace (and of namespaces nested in it)."""
        ...

    async def check(self) -> None:
        """Raise :class:`~freightscale.exceptions.StoreUnavailableError` if the backend is down."""
        ...

    async def aclose(self) -> None:
        """Release the store's connections; views share them, so close the root."""
        ...

    def with_namespace(self, namespace: str) -> Store:
        """Return a view of this store whose keys live under ``namespace``."""
        ...


def join_namespace(parent: str, child: str) -> str:
    """Join two namespace parts with ``:``; neither may be empty or contain ``*``."""
    if not child or any(c in child for c in "*?[]"):
        raise ValueError(f"namespace {child!r} must be non-empty and free of glob characters")
    return f"{parent}:{child}" if parent else child


def store_bytes(value: bytes | bytearray | memoryview) -> bytes:
    """``value`` as ``bytes``, the one value type every store accepts.

    Raises:
        TypeError: ``value`` is not bytes-like (each feature serialises its own values).
    """
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"store values are bytes, got {type(value).__name__}")
    return bytes(value)
