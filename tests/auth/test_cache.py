"""The verification cache and the warm path built on it: exact keys, expiry,
bounds, and the warm path giving up whenever its answer could be stale."""

from __future__ import annotations

from typing import Any

from freightscale.auth import Authenticator, AuthMiddleware, CachedToken, VerificationCache
from freightscale.context import Principal
from freightscale.stores import MemoryStore
from tests.auth.conftest import bearer, hs_settings, hs_token, make_app
from tests.auth.test_middleware import counting
from tests.auth.test_rbac import Loader, post
from tests.auth.test_verify import assert_401, get


def entry(expires_at: float) -> CachedToken:
    return CachedToken(Principal("u"), expires_at, None, None)


def test_positive_entries_expire_are_bounded_and_exact() -> None:
    now = [1000.0]
    cache = VerificationCache(ttl=300, max_entries=2, clock=lambda: now[0])
    first = entry(1010.0)
    cache.put(b"a.b.c", first)
    assert cache.get(b"a.b.c") is first
    assert cache.get(b"a.b.d") is None  # one byte apart: another token
    assert cache.get(b"a.b.c ") is None
    now[0] = 1010.0
    assert cache.get(b"a.b.c") is None  # dies at its expiry...
    assert len(cache) == 0  # ...and is dropped
    for key in (b"t1", b"t2", b"t3"):
        cache.put(key, entry(2000.0))
    assert len(cache) == 2
    assert cache.get(b"t1") is None  # the oldest went first
    assert cache.get(b"t3") is not None
    # The warm path's index follows every insertion, eviction, expiry drop and clear.
    assert cache.peek(b"t1") is None
    assert cache.peek(b"t3") is cache.get(b"t3")
    assert dict(cache._positive.index) == dict(cache._positive.items())
    cache.put(b"t3", entry(3000.0))  # replacing keeps one entry per key
    assert cache.peek(b"t3") is cache.get(b"t3")
    assert len(cache._positive.index) == len(cache) == 2
    now[0] = 2000.0
    assert cache.peek(b"t2") is not None  # peek does not look at the clock...
    assert cache.get(b"t2") is None  # ...get does, and drops the entry
    assert cache.peek(b"t2") is None
    cache.clear()
    assert cache.peek(b"t3") is None
    assert len(cache._positive.index) == 0


def test_only_bearer_shaped_keys_and_live_entries_are_cached() -> None:
    cache = VerificationCache(ttl=300, clock=lambda: 1000.0)
    for key in (b"a b", b"a\tb", "caf\u00e9".encode(), b""):
        cache.put(key, entry(2000.0))
        assert cache.get(key) is None, key
    cache.put(b"expired", entry(999.0))
    assert len(cache) == 0
    assert VerificationCache(ttl=0).get(b"x") is None


def test_negative_entries_are_digests_and_expire() -> None:
    now = [1000.0]
    cache = VerificationCache(negative_ttl=10, negative_max_entries=2, clock=lambda: now[0])
    huge = b"x" * 8000
    cache.put_negative(huge, "the token is malformed")
    assert cache.get_negative(huge) == "the token is malformed"
    assert cache.get_negative(huge[:-1]) is None
    assert all(len(key) == 16 for key in cache._negative)  # not the hostile bytes
    now[0] = 1010.0
    assert cache.get_negative(huge) is None
    assert len(cache._negative) == 0


async def test_warm_path_tampered_and_padded_tokens() -> None:
    auth = Authenticator(hs_settings())
    counter = counting(auth)
    app = AuthMiddleware(make_app(), authenticator=auth)
    token = hs_token()
    for _ in range(3):
        assert (await get(app, bearer(token))).json()["user"] == "user-1"
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    assert_401(await get(app, bearer(tampered)))
    assert_401(await get(app, {"Authorization": f"Bearer {token}x"}))
    # Surrounding spaces never reach the cache as part of a key, yet the token is the same.
    response = await get(app, {"Authorization": f"Bearer   {token}  "})
    assert response.json()["user"] == "user-1"
    assert counter.calls == 3  # the good token once, each bad one once
    assert len(auth.cache) == 1


async def test_warm_path_reloads_permissions_after_their_ttl() -> None:
    now = [0.0]
    loader = Loader()
    store = MemoryStore(clock=lambda: now[0])  # the shared copy expires on the same clock
    auth = Authenticator(hs_settings(permission_ttl=10), store=store, permission_loader=loader)
    assert auth.permissions is not None
    # Both clocks: the warm path keeps the permissions' deadline on the cache's clock.
    auth.permissions.clock = auth.cache.clock = lambda: now[0]
    app = AuthMiddleware(make_app(), authenticator=auth)
    token = hs_token(roles=["dispatcher"])
    for step in range(30):  # 30 simulated seconds
        now[0] = float(step)
        assert (await post(app, bearer(token))).status_code == 200
    assert loader.calls == 3  # once per 10 s, never served past the ttl


async def test_warm_path_sees_a_version_bump_at_once() -> None:
    table = {"clerk": ["shipments:read"]}
    auth = Authenticator(hs_settings(), permission_loader=Loader(table))
    app = AuthMiddleware(make_app(), authenticator=auth)
    token = hs_token(roles=["clerk"])
    for _ in range(3):
        assert (await post(app, bearer(token))).status_code == 403
    table["clerk"] = ["shipments:write"]
    assert auth.permissions is not None
    await auth.permissions.bump("acme")
    assert (await post(app, bearer(token))).status_code == 200
    me: dict[str, Any] = (await get(app, bearer(token))).json()
    assert me["permissions"] == ["shipments:write"]


async def test_warm_path_honours_a_local_revocation() -> None:
    auth = Authenticator(hs_settings(), permission_loader=Loader())
    app = AuthMiddleware(make_app(), authenticator=auth)
    token = hs_token(jti="j-1")
    other = hs_token(jti="j-2")
    for _ in range(3):
        assert (await get(app, bearer(token))).status_code == 200
        assert (await get(app, bearer(other))).status_code == 200
    await auth.revocations.revoke_token("j-1")
    assert_401(await get(app, bearer(token)), "revoked")
    assert (await get(app, bearer(other))).status_code == 200


async def test_a_revocation_rechecks_cached_tokens_locally_and_keeps_the_rest_warm() -> None:
    auth = Authenticator(hs_settings(), permission_loader=Loader())
    calls = counting(auth)
    app = AuthMiddleware(make_app(), authenticator=auth)
    alice, bob = hs_token(sub="alice"), hs_token(sub="bob")
    for token in (alice, bob):
        assert (await get(app, bearer(token))).status_code == 200
    assert calls.calls == 2
    # Warm: the same answer object, stamped with the current generation.
    first = auth.cached(alice.encode())
    assert first is not None
    assert auth.cached(alice.encode()) is first
    generation = auth.generation.value
    await auth.revocations.revoke_user("bob", "acme")
    assert auth.generation.value > generation  # every cached answer is checked again
    assert auth.cached(bob.encode()) is None  # revoked: the middleware will say why
    assert auth.cached(alice.encode()) is first  # checked locally, restamped, same answer
    assert_401(await get(app, bearer(bob)), "revoked")
    assert (await get(app, bearer(alice))).status_code == 200
    assert calls.calls == 2  # neither request verified a signature again


async def test_a_permission_bump_restamps_with_the_new_permissions() -> None:
    table = {"clerk": ["shipments:read"]}
    auth = Authenticator(hs_settings(), permission_loader=Loader(table))
    app = AuthMiddleware(make_app(), authenticator=auth)
    token = hs_token(roles=["clerk"])
    assert (await get(app, bearer(token))).status_code == 200
    before = auth.cached(token.encode())
    assert before is not None
    assert before[0].permissions == {"shipments:read"}
    assert auth.permissions is not None
    table["clerk"] = ["shipments:read", "shipments:write"]
    await auth.permissions.bump("acme")
    assert auth.cached(token.encode()) is None  # the tenant's permissions must be loaded
    assert (await get(app, bearer(token))).status_code == 200
    after = auth.cached(token.encode())
    assert after is not None
    assert after[0].permissions == {"shipments:read", "shipments:write"}
