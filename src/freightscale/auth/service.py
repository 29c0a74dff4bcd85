"""The :class:`Authenticator`: verification, caches, revocation and RBAC in one object.

The middleware asks it to turn a bearer token into a principal; the app uses
it to revoke tokens and to invalidate permissions::

    auth = Authenticator(settings.auth, redis=client, permission_loader=load_permissions)
    app = AuthMiddleware(app, authenticator=auth)
    ...
    await auth.revocations.revoke_user(user_id, tenant_id)   # log out everywhere
    await auth.permissions.bump(tenant_id)                   # roles changed
    await auth.aclose()                                      # on shutdown
"""

from __future__ import annotations

import asyncio
import logging
from types import MappingProxyType
from typing import Any

from starlette.authentication import AuthCredentials

from freightscale.auth.cache import CachedToken, Generation, VerificationCache, token_key
from freightscale.auth.events import EventBus, MemoryBus, RedisBus
from freightscale.auth.keys import JWKSKeySource
from freightscale.auth.rbac import PermissionCache, PermissionLoader
from freightscale.auth.revocation import RevocationList
from freightscale.auth.verify import InvalidToken, TokenVerifier
from freightscale.backends.redis import RedisClient
from freightscale.context import Principal
from freightscale.settings.auth import AuthSettings
from freightscale.stores.base import Store
from freightscale.stores.memory import MemoryStore
from freightscale.telemetry import Tally, get_counter

__all__ = ["Authenticator"]

logger = logging.getLogger("freightscale.auth")
_HIT = {"result": "hit"}
_MISS = {"result": "miss"}


class Authenticator:
    """Turn bearer tokens into principals, with caches, revocation and RBAC.

    Args:
        settings: the auth settings.
        redis: a Redis client shared by every instance (revocations, permission
            versions, events). Without one everything is in-process.
        store: the shared store to use instead of one built on ``redis``.
        bus: the event bus to use instead of one built on ``redis``.
        permission_loader: resolves roles to permissions; without one
            principals carry no permissions (``require_permission`` denies).
        jwks: a JWKS key source to use instead of one built from ``jwks_url``.
    """

    def __init__(
        self,
        settings: AuthSettings,
        *,
        redis: RedisClient | None = None,
        store: Store | None = None,
        bus: EventBus | None = None,
        permission_loader: PermissionLoader | None = None,
        jwks: JWKSKeySource | None = None,
    ) -> None:
        self.settings = settings
        self.verifier = TokenVerifier(settings, jwks=jwks)
        self.cache = VerificationCache(
            ttl=settings.cache_ttl,
            max_entries=settings.cache_max_entries,
            negative_ttl=settings.negative_cache_ttl,
            negative_max_entries=settings.negative_cache_max_entries,
        )
        if store is None:
            if redis is not None:
                from freightscale.stores.redis import RedisStore

                store = RedisStore(redis, key_prefix=settings.key_prefix).with_namespace("auth")
            else:
                store = MemoryStore(100_000).with_namespace("auth")
        if bus is None:
            bus = (
                RedisBus(
                    redis,
                    key_prefix=settings.key_prefix,
                    sync_interval=settings.revocation_sync_interval,
                )
                if redis is not None
                else MemoryBus()
            )
        self.store = store
        self.bus = bus
        self.generation = Generation()
        """Bumped by revocations heard of and permission-table changes: a cached
        answer stamped with an older value is checked again before reuse."""
        self.revocations = RevocationList(
            store.with_namespace("revoked"),
            bus,
            local_ttl=settings.cache_ttl,
            retention=settings.revocation_retention,
            fail_mode=settings.revocation_fail_mode,
            timeout=settings.redis_timeout,
            on_reset=self.cache.clear,
            generation=self.generation,
        )
        self.permissions: PermissionCache | None = None
        if permission_loader is not None:
            self.permissions = PermissionCache(
                permission_loader,
                store.with_namespace("rbac"),
                bus,
                ttl=settings.permission_ttl,
                max_entries=settings.permission_max_entries,
                timeout=settings.redis_timeout,
                loader_timeout=settings.permission_loader_timeout,
                generation=self.generation,
            )
        self._started = False
        self._start_lock = asyncio.Lock()
        self._peek = self.cache.peek
        token_cache = get_counter("freightscale.auth.token_cache")
        self._token_hits = token_cache.series(_HIT)
        self._token_misses = token_cache.series(_MISS)
        # Without RBAC there are no permission lookups to count: a tally nobody reports.
        self._permission_hits = (
            get_counter("freightscale.auth.permission_cache").series(_HIT)
            if self.permissions is not None
            else Tally({})
        )
        self._claims = (
            settings.subject_claim,
            settings.tenant_claim,
            settings.roles_claim,
            settings.scopes_claim,
        )

    def __repr__(self) -> str:
        return f"Authenticator(algorithms={self.settings.algorithms}, cached={len(self.cache)})"

    async def start(self) -> None:
        """Start the background tasks (event listener, revocation poll); idempotent."""
        if self._started:
            return
        async with self._start_lock:
            if not self._started:
                await self.bus.start()
                self._started = self.bus.started

    def cached(self, key: bytes) -> tuple[Principal, AuthCredentials] | None:
        """The warm path: the principal and credentials of an already verified token.

        ``key`` is ``token_key(token)``, the token's bytes. No I/O and no
        hashing beyond the dict lookup: the answer the last :meth:`authenticate`
        call for the token built is returned as it is while it is stamped with
        the current :attr:`generation` and its deadline (the token's cache
        expiry, the permissions' TTL) is ahead. After a revocation or a
        permission change the entry is checked again against the local tables
        (still no I/O) and restamped. None means "call :meth:`authenticate`",
        which also gives the reason a token is refused.
        """
        entry = self._peek(key)
        if entry is None:
            return None
        if entry.generation == self.generation.value and entry.until > self.cache.clock():
            self._token_hits.value += 1
            self._permission_hits.value += 1
            return entry.resolved
        if not self._started or entry.expires_at <= self.cache.clock():
            return None  # authenticate() starts the listener / drops the expired entry
        principal = entry.principal
        if self.revocations.revoked_locally(
            entry.jti, principal.user_id, principal.tenant_id, entry.iat
        ):
            return None
        generation = self.generation.value
        permissions = self.permissions
        if permissions is None:
            resolved = entry.stamp(None, generation, entry.expires_at)
        else:
            found = permissions.lookup(principal.tenant_id, principal.roles)
            if found is None:
                return None  # a load (I/O) is due
            self._permission_hits.value += 1
            resolved = entry.stamp(found[0], generation, self._until(entry, found[1]))
        self._token_hits.value += 1
        return resolved

    async def authenticate(
        self, token: str, *, key: bytes | None = None
    ) -> tuple[Principal, AuthCredentials]:
        """Return the principal and Starlette credentials for ``token``.

        ``key`` is ``token_key(token)`` (the token's bytes) when the caller already has it.

        Raises:
            InvalidToken: the token is invalid or revoked (HTTP 401).
            StoreUnavailableError: the revocation store is down and fails closed (503).
        """
        if not self._started:
            await self.start()
        if key is None:
            key = token_key(token)
        entry = self.cache.get(key)
        if entry is None:
            entry = await self._verify(key, token)
        else:
            self._token_hits.value += 1
            principal = entry.principal
            if self.revocations.revoked_locally(
                entry.jti, principal.user_id, principal.tenant_id, entry.iat
            ):
                self.cache.put_negative(key, "the token has been revoked")
                raise InvalidToken("the token has been revoked")
        generation = self.generation.value
        permissions = self.permissions
        if permissions is None:
            return entry.stamp(None, generation, entry.expires_at)
        principal = entry.principal
        found = permissions.lookup(principal.tenant_id, principal.roles)
        if found is not None:
            self._permission_hits.value += 1
            return entry.stamp(found[0], generation, self._until(entry, found[1]))
        # get() counts the miss when it calls the loader; a store hit counts as a hit.
        loads_before = permissions.loads
        perms = await permissions.get(principal.tenant_id, principal.roles)
        if permissions.loads == loads_before:
            self._permission_hits.value += 1
        # What the warm path may reuse: the tables as they are now (no await since).
        generation = self.generation.value
        found = permissions.lookup(principal.tenant_id, principal.roles)
        if found is not None and found[0] is perms:
            return entry.stamp(perms, generation, self._until(entry, found[1]))
        return entry.stamp(perms, generation, float("-inf"))

    def _until(self, entry: CachedToken, permissions_deadline: float) -> float:
        """The earlier of the entry's expiry and a permission-clock deadline, on the cache clock."""
        assert self.permissions is not None
        remaining = permissions_deadline - self.permissions.clock()
        return min(entry.expires_at, self.cache.clock() + remaining)

    async def _verify(self, key: bytes, token: str) -> CachedToken:
        failure = self.cache.get_negative(key)
        if failure is not None:
            self._token_hits.value += 1
            raise InvalidToken(failure)
        self._token_misses.value += 1
        try:
            claims = await self.verifier.verify(token)
        except InvalidToken as exc:
            if exc.cacheable:
                self.cache.put_negative(key, exc.description)
            raise
        principal = self._principal(claims)
        jti = claims.get("jti")
        iat = claims.get("iat")
        if await self.revocations.is_revoked(jti, principal.user_id, principal.tenant_id, iat):
            self.cache.put_negative(key, "the token has been revoked")
            raise InvalidToken("the token has been revoked")
        entry = CachedToken(principal, self.cache.expiry_for(claims.get("exp")), jti, iat)
        self.cache.put(key, entry)
        return entry

    def _principal(self, claims: dict[str, Any]) -> Principal:
        sub_claim, tenant_claim, roles_claim, scopes_claim = self._claims
        scopes = claims.get(scopes_claim)
        if isinstance(scopes, str):
            scope_set = frozenset(scopes.split())
        elif isinstance(scopes, list):
            scope_set = frozenset(s for s in scopes if isinstance(s, str))
        else:
            scope_set = frozenset()
        return Principal(
            user_id=claims[sub_claim],
            tenant_id=claims.get(tenant_claim),
            roles=frozenset(claims.get(roles_claim) or ()),
            scopes=scope_set,
            # Read-only: the principal is cached and shared by every request with this token.
            claims=MappingProxyType(claims),
        )

    async def aclose(self) -> None:
        """Stop the background tasks and close the JWKS client."""
        await self.bus.aclose()
        await self.verifier.aclose()
        self._started = False
        self.generation.bump()  # no listener now: nothing may be answered unchecked
