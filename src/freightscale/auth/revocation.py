"""Token revocation shared by every instance.

Three kinds, each a key in the shared :class:`~freightscale.stores.Store`:

* one token: ``jti:<jti>``, kept until the token would have expired;
* "log out everywhere" for a user: ``user:<tenant>:<sub>`` holds a cutoff time,
  every token of that user issued (``iat``) before it is revoked;
* the same for a whole tenant: ``tenant:<tenant>``.

The store is read only when a token is first seen (a verification-cache miss).
Tokens already in a cache are revoked by events on the
:class:`~freightscale.auth.events.EventBus`, which every instance applies to a
small local table checked on each cache hit with no I/O. The bound: an
instance honours a revocation as soon as the pub/sub message arrives, and at
the latest ``revocation_sync_interval`` seconds later (the stream poll).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Literal, TypeVar
from urllib.parse import quote

from cachetools import TTLCache

from freightscale.auth.cache import Generation
from freightscale.auth.events import Event, EventBus
from freightscale.exceptions import StoreError, StoreUnavailableError
from freightscale.stores.base import Store
from freightscale.stores.memory import MemoryStore
from freightscale.telemetry import get_counter

__all__ = ["RevocationList"]

_K = TypeVar("_K")

logger = logging.getLogger("freightscale.auth")


def _part(value: str | None) -> str:
    # "-" for None cannot collide with a real value, which always starts with "=".
    return "-" if value is None else "=" + quote(value, safe="")


class RevocationList:
    """Revoke tokens, users and tenants; answer "is this token revoked?".

    Args:
        store: the shared store (a namespaced view is fine).
        bus: carries revocation events to every instance.
        local_ttl: seconds a revocation stays in the local table; at least the
            verification cache's TTL, since only cached tokens rely on it.
        retention: seconds a user/tenant cutoff is kept in the store.
        fail_mode: on a store outage, ``open`` treats the token as not revoked,
            ``closed`` raises :class:`~freightscale.exceptions.StoreUnavailableError`.
        timeout: seconds one store check may take.
        max_local: entries per local table; when one is full ``on_reset`` is
            called so the caches drop tokens that could miss a revocation.
        on_reset: called when local knowledge is incomplete (table full, events lost).
        clock: wall clock (compared with ``iat``).
        generation: bumped on every revocation heard of and every reset, so
            cached answers are checked against the local tables again.
    """

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        *,
        local_ttl: float = 300.0,
        retention: float = 86_400.0,
        fail_mode: Literal["open", "closed"] = "open",
        timeout: float = 0.5,
        max_local: int = 100_000,
        on_reset: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        generation: Generation | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.retention = retention
        self.fail_mode = fail_mode
        self.timeout = timeout
        self._max_local = max_local
        self._on_reset = on_reset
        self._clock = clock
        ttl = max(local_ttl, 1.0) + 5.0
        self._jtis: TTLCache[str, bool] = TTLCache(max_local, ttl)
        self._users: TTLCache[tuple[str | None, str], float] = TTLCache(max_local, ttl)
        self._tenants: TTLCache[str, float] = TTLCache(max_local, ttl)
        self._failing = False
        self.active = False
        """False until this instance hears of any revocation: until then no token is
        revoked locally."""
        self.generation = generation if generation is not None else Generation()
        self._sequential = isinstance(store, MemoryStore)
        bus.subscribe(self.apply)

    # -- writing ---------------------------------------------------------------------------

    async def revoke_token(self, jti: str, *, expires_at: float | None = None) -> None:
        """Revoke the token ``jti`` until ``expires_at`` (its ``exp``; default: retention)."""
        ttl = self.retention if expires_at is None else max(expires_at - self._clock(), 1.0)
        await self.store.set(f"jti:{_part(jti)}", b"1", expires_in=ttl)
        await self._publish({"k": "jti", "j": jti})

    async def revoke_user(
        self, user_id: str, tenant_id: str | None = None, *, before: float | None = None
    ) -> None:
        """Revoke every token of ``user_id`` (in ``tenant_id``) issued before ``before`` (now)."""
        cutoff = self._clock() if before is None else before
        key = f"user:{_part(tenant_id)}:{_part(user_id)}"
        await self.store.set(key, repr(cutoff).encode(), expires_in=self.retention)
        await self._publish({"k": "user", "t": tenant_id, "s": user_id, "c": cutoff})

    async def revoke_tenant(self, tenant_id: str, *, before: float | None = None) -> None:
        """Revoke every token of ``tenant_id`` issued before ``before`` (now)."""
        cutoff = self._clock() if before is None else before
        await self.store.set(
            f"tenant:{_part(tenant_id)}", repr(cutoff).encode(), expires_in=self.retention
        )
        await self._publish({"k": "tenant", "t": tenant_id, "c": cutoff})

    async def _publish(self, event: Event) -> None:
        try:
            await self.bus.publish(event)
        except StoreError:
            raise
        except Exception as exc:
            # The store write succeeded, so new lookups see the revocation; cached
            # copies elsewhere see it at the next successful poll.
            raise StoreUnavailableError(f"revocation stored but not broadcast: {exc}") from exc

    # -- events ----------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Apply one bus event to the local tables."""
        kind = event.get("k")
        if kind in ("jti", "user", "tenant"):
            self.active = True
        if kind == "reset":
            self._reset()
        elif kind == "jti" and isinstance(event.get("j"), str):
            self._put(self._jtis, event["j"], True)
        elif kind == "user" and isinstance(event.get("s"), str) and _num(event.get("c")):
            tenant = event.get("t")
            if tenant is None or isinstance(tenant, str):
                self._put_max(self._users, (tenant, event["s"]), float(event["c"]))
        elif kind == "tenant" and isinstance(event.get("t"), str) and _num(event.get("c")):
            self._put_max(self._tenants, event["t"], float(event["c"]))
        else:
            return
        self.generation.bump()

    def _put(self, table: TTLCache[str, bool], key: str, value: bool) -> None:
        if len(table) >= self._max_local:
            self._reset()
        table[key] = value

    def _put_max(self, table: TTLCache[_K, float], key: _K, cutoff: float) -> None:
        if len(table) >= self._max_local:
            self._reset()
        table[key] = max(cutoff, table.get(key, cutoff))

    def _reset(self) -> None:
        if self._on_reset is not None:
            self._on_reset()

    # -- reading ---------------------------------------------------------------------------

    def revoked_locally(
        self, jti: str | None, user_id: str, tenant_id: str | None, iat: float | None
    ) -> bool:
        """True if a revocation this instance has heard of covers the token (no I/O)."""
        if not self.active:
            return False
        if self._jtis and jti is not None and jti in self._jtis:
            return True
        if self._users:
            cutoff = self._users.get((tenant_id, user_id))
            if cutoff is not None and (iat is None or iat < cutoff):
                return True
        if self._tenants and tenant_id is not None:
            cutoff = self._tenants.get(tenant_id)
            if cutoff is not None and (iat is None or iat < cutoff):
                return True
        return False

    async def is_revoked(
        self, jti: str | None, user_id: str, tenant_id: str | None, iat: float | None
    ) -> bool:
        """True if the shared store says the token is revoked.

        Raises:
            StoreUnavailableError: the store is down and ``fail_mode`` is ``closed``.
        """
        if self.revoked_locally(jti, user_id, tenant_id, iat):
            return True
        keys = [f"user:{_part(tenant_id)}:{_part(user_id)}"]
        if tenant_id is not None:
            keys.append(f"tenant:{_part(tenant_id)}")
        if jti is not None:
            keys.append(f"jti:{_part(jti)}")
        try:
            async with asyncio.timeout(self.timeout):
                if self._sequential:  # memory: nothing to overlap, tasks would only cost
                    values = [await self.store.get(k) for k in keys]
                else:
                    values = list(await asyncio.gather(*(self.store.get(k) for k in keys)))
        except (StoreError, TimeoutError, OSError) as exc:
            get_counter("freightscale.backend.fallbacks").add(
                1, {"component": "auth.revocation", "policy": self.fail_mode}
            )
            if not self._failing:
                get_counter("freightscale.backend.outages").add(
                    1, {"service": "store", "component": "auth.revocation"}
                )
                logger.warning("revocation store unavailable (%r); failing %s", exc, self.fail_mode)
            self._failing = True
            if self.fail_mode == "closed":
                raise StoreUnavailableError("the revocation store is unavailable") from exc
            return False
        if self._failing:
            logger.warning("revocation store recovered")
        self._failing = False
        if jti is not None and values[-1] is not None:
            return True
        for raw in values[: 2 if tenant_id is not None else 1]:
            if raw is None:
                continue
            try:
                cutoff = float(raw)
            except ValueError:
                continue
            if iat is None or iat < cutoff:
                return True
        return False


def _num(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
