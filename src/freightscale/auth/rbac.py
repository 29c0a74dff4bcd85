"""Role-based access control with a two-level permission cache.

Roles map to permissions through a :class:`PermissionLoader` the app supplies
(typically one database query). Results are cached in process and in the
shared store, under the tenant's *permission version*: changing a tenant's
roles calls :meth:`PermissionCache.bump`, which increments the version in the
store and broadcasts it, so every instance stops using the old permissions
at once (at the latest after the event bus's sync interval).

A warm lookup is two dictionary reads and no I/O. Permission strings are
``resource:action`` (any depth); a granted ``resource:*`` covers every action
under it and ``*`` covers everything. Anything not granted is denied.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar
from urllib.parse import quote

from freightscale.auth.cache import Generation
from freightscale.auth.events import Event, EventBus
from freightscale.exceptions import StoreError, StoreUnavailableError
from freightscale.stores.base import Store
from freightscale.telemetry import get_counter

__all__ = ["PermissionCache", "PermissionLoader", "has_permission"]

logger = logging.getLogger("freightscale.auth")

_Key = tuple[str | None, int, frozenset[str]]
_T = TypeVar("_T")
_MISS = {"result": "miss"}
_V = TypeVar("_V")


class PermissionLoader(Protocol):
    """Return the permissions granted by ``roles`` in ``tenant_id``."""

    def __call__(
        self, tenant_id: str | None, roles: frozenset[str]
    ) -> Awaitable[Iterable[str]]: ...


def has_permission(granted: frozenset[str], required: str) -> bool:
    """True if ``granted`` covers ``required`` (exact, ``prefix:*`` or ``*``)."""
    if required in granted or "*" in granted:
        return True
    parts = required.split(":")
    return any(":".join(parts[:i]) + ":*" in granted for i in range(1, len(parts)))


def _tenant_part(tenant_id: str | None) -> str:
    # "-" for no tenant cannot collide with a tenant id, which always starts with "=".
    return "-" if tenant_id is None else "=" + quote(tenant_id, safe="")


class PermissionCache:
    """Resolve (tenant, roles) to permissions, cached per tenant version.

    Args:
        loader: the app's permission loader.
        store: the shared store holding versions and cached permission sets.
        bus: carries version bumps to every instance.
        ttl: seconds a resolved set is cached, locally and in the store.
        max_entries: most (tenant, roles) sets kept locally.
        timeout: seconds a store call may take before the loader is used directly.
        loader_timeout: seconds the app's loader may take; a loader that fails or
            is slower raises ``StoreUnavailableError`` (the middleware answers 503).
        clock: monotonic clock, injectable for tests.
        generation: bumped whenever the local tables change (shared with the
            verification cache's other inputs by the :class:`Authenticator`).
    """

    def __init__(
        self,
        loader: PermissionLoader,
        store: Store,
        bus: EventBus,
        *,
        ttl: float = 60.0,
        max_entries: int = 10_000,
        timeout: float = 0.5,
        loader_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        generation: Generation | None = None,
    ) -> None:
        self.loader = loader
        self.loader_timeout = loader_timeout
        self.store = store
        self.ttl = ttl
        self.timeout = timeout
        self.max_entries = max_entries
        self.clock = clock
        """The monotonic clock the cache's deadlines are measured on."""
        # Plain dicts with deadlines: the warm path is two dict reads and one clock call.
        # Bounded by max_entries (the oldest entry is dropped first).
        self._versions: dict[str | None, tuple[int, float]] = {}
        self._sets: dict[_Key, tuple[frozenset[str], float]] = {}
        self._inflight: dict[_Key | str | None, asyncio.Future[frozenset[str]]] = {}
        self._failing = False
        self.loads = 0
        """How many times the loader was called (tests and metrics)."""
        self._generation = generation if generation is not None else Generation()
        bus.subscribe(self.apply)
        self._bus = bus

    @property
    def generation(self) -> int:
        """Changes whenever the local tables change (a load, a version bump, a reset):
        while it is unchanged, an answer of :meth:`lookup` stays the answer until
        its deadline, so a caller may keep it instead of asking again."""
        return self._generation.value

    def cached(self, tenant_id: str | None, roles: frozenset[str]) -> frozenset[str] | None:
        """The locally cached permissions, or None (no I/O)."""
        found = self.lookup(tenant_id, roles)
        return found[0] if found is not None else None

    def lookup(
        self, tenant_id: str | None, roles: frozenset[str]
    ) -> tuple[frozenset[str], float] | None:
        """The locally cached permissions and the :attr:`clock` time they expire, or None."""
        known = self._versions.get(tenant_id)
        if known is None:
            return None
        found = self._sets.get((tenant_id, known[0], roles))
        if found is None:
            return None
        deadline = min(known[1], found[1])
        if self.clock() >= deadline:
            return None
        return found[0], deadline

    async def get(self, tenant_id: str | None, roles: frozenset[str]) -> frozenset[str]:
        """Return the permissions of ``roles`` in ``tenant_id``, loading them if needed."""
        found = self.cached(tenant_id, roles)
        if found is not None:
            return found
        flight_key = (tenant_id, -1, roles)
        pending = self._inflight.get(flight_key)
        if pending is not None:  # one load per key at a time, however many requests wait
            return await asyncio.shield(pending)
        future: asyncio.Future[frozenset[str]] = asyncio.get_running_loop().create_future()
        self._inflight[flight_key] = future
        try:
            result = await self._resolve(tenant_id, roles)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[flight_key]

    async def _resolve(self, tenant_id: str | None, roles: frozenset[str]) -> frozenset[str]:
        tpart = _tenant_part(tenant_id)
        digest = hashlib.sha256("\n".join(sorted(roles)).encode()).hexdigest()[:32]
        known = self._versions.get(tenant_id)
        version = known[0] if known is not None and self.clock() < known[1] else None
        try:
            async with asyncio.timeout(self.timeout):
                if version is None:
                    raw = await self.store.get(f"ver:{tpart}")
                    version = int(raw) if raw is not None else 0
                key = f"perms:{tpart}:{version}:{digest}"
                cached = await self.store.get(key)
            self._recovered()
        except (StoreError, TimeoutError, OSError, ValueError) as exc:
            self._outage(exc)
            # Without the store: load directly and cache locally under the last known version.
            version = version if version is not None else 0
            perms = await self._load(tenant_id, roles)
            self._remember(tenant_id, version, roles, perms)
            return perms
        decoded = _decode(cached) if cached is not None else None
        if decoded is not None:
            perms = decoded
        else:
            perms = await self._load(tenant_id, roles)
            try:
                async with asyncio.timeout(self.timeout):
                    await self.store.set(key, _encode(perms), expires_in=self.ttl)
            except (StoreError, TimeoutError, OSError) as exc:
                self._outage(exc)
        self._remember(tenant_id, version, roles, perms)
        return perms

    async def _load(self, tenant_id: str | None, roles: frozenset[str]) -> frozenset[str]:
        self.loads += 1
        get_counter("freightscale.auth.permission_cache").add(1, _MISS)
        # The loader is the app's code (often a database query): its failure
        # or slowness is an outage of a dependency, answered with a 503 —
        # never a 500, never a request that hangs.
        try:
            async with asyncio.timeout(self.loader_timeout):
                granted = await self.loader(tenant_id, roles)
            return frozenset(str(p) for p in granted)
        except StoreUnavailableError:
            raise
        except TimeoutError as exc:
            raise StoreUnavailableError(
                f"the permission loader did not answer within {self.loader_timeout}s"
            ) from exc
        except Exception as exc:
            raise StoreUnavailableError(
                f"the permission loader failed: {type(exc).__name__}"
            ) from exc

    def _remember(
        self, tenant_id: str | None, version: int, roles: frozenset[str], perms: frozenset[str]
    ) -> None:
        self._generation.bump()
        deadline = self.clock() + self.ttl
        current = self._versions.get(tenant_id)
        if current is None or current[0] <= version or self.clock() >= current[1]:
            _bounded_put(self._versions, tenant_id, (version, deadline), self.max_entries)
        _bounded_put(self._sets, (tenant_id, version, roles), (perms, deadline), self.max_entries)

    async def bump(self, tenant_id: str | None) -> int:
        """Invalidate the permissions of ``tenant_id`` everywhere; return the new version.

        Call it after changing the tenant's roles or role grants.
        """
        version = await self.store.incr(f"ver:{_tenant_part(tenant_id)}")
        await self._bus.publish({"k": "perm", "t": tenant_id, "v": version})
        return version

    def apply(self, event: Event) -> None:
        """Apply one bus event (a version bump or a reset)."""
        kind = event.get("k")
        if kind == "reset":
            self._generation.bump()
            self._versions.clear()
            self._sets.clear()
        elif kind == "perm":
            tenant, version = event.get("t"), event.get("v")
            if (tenant is None or isinstance(tenant, str)) and isinstance(version, int):
                current = self._versions.get(tenant)
                if current is None or current[0] < version:
                    self._generation.bump()
                    deadline = self.clock() + self.ttl
                    _bounded_put(self._versions, tenant, (version, deadline), self.max_entries)

    def _outage(self, exc: BaseException) -> None:
        get_counter("freightscale.backend.fallbacks").add(
            1, {"component": "auth.permissions", "policy": "loader"}
        )
        if not self._failing:
            get_counter("freightscale.backend.outages").add(
                1, {"service": "store", "component": "auth.permissions"}
            )
            logger.warning("permission cache store unavailable (%r); using the loader", exc)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            logger.warning("permission cache store recovered")
        self._failing = False


def _bounded_put(table: dict[_T, _V], key: _T, value: _V, limit: int) -> None:
    table.pop(key, None)  # re-insert at the end: insertion order is age order
    while len(table) >= limit:
        del table[next(iter(table))]
    table[key] = value


def _encode(perms: frozenset[str]) -> bytes:
    return json.dumps(sorted(perms), separators=(",", ":")).encode()


def _decode(raw: bytes) -> frozenset[str] | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        return None
    return frozenset(data)
