"""Client IP extraction: trusted proxies only, hostile headers ignored safely."""

from __future__ import annotations

import pytest

from freightscale.ratelimit.keys import ClientIP, TrustedProxies, hashed, key_for
from freightscale.settings.ratelimit import RateLimitSettings
from tests.ratelimit.conftest import client_for


def scope(peer: str, *headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "client": (peer, 1234), "headers": list(headers)}


TRUSTED = ClientIP(TrustedProxies(["10.0.0.0/8", "fd00::/8"]))


def test_untrusted_peer_cannot_spoof() -> None:
    s = scope("203.0.113.9", (b"x-forwarded-for", b"1.1.1.1"), (b"forwarded", b"for=2.2.2.2"))
    assert TRUSTED(s) == "203.0.113.9"
    assert ClientIP(TrustedProxies())(s) == "203.0.113.9"


def test_trusted_proxy_chain_read_from_the_right() -> None:
    s = scope("10.0.0.2", (b"x-forwarded-for", b"6.6.6.6, 198.51.100.4, 10.0.0.1"))
    # 6.6.6.6 could be forged by the client; the first untrusted hop from the right wins
    assert TRUSTED(s) == "198.51.100.4"


def test_forwarded_header_with_ipv6_and_ports() -> None:
    s = scope("10.1.1.1", (b"forwarded", b'for="[2001:db8::17]:4711";proto=https, for=10.0.0.3'))
    assert TRUSTED(s) == "2001:db8::17"
    s = scope("10.1.1.1", (b"forwarded", b"for=192.0.2.60:8080"))
    assert TRUSTED(s) == "192.0.2.60"


@pytest.mark.parametrize(
    "value",
    [
        b"not-an-ip",
        b"," * 10_000,
        b"1.2.3.4" + b", 999.1.1.1" * 5000,
        b"\xff\xfe\x00garbage",
        b"for=" + b"A" * 100_000,
        b"",
    ],
)
def test_absurd_header_values_do_not_crash(value: bytes) -> None:
    for name in (b"x-forwarded-for", b"forwarded"):
        ip = TRUSTED(scope("10.0.0.2", (name, value)))
        assert isinstance(ip, str)
        assert len(ip) <= 45


def test_missing_client_and_key_kinds() -> None:
    assert TRUSTED({"type": "http", "headers": []}) == "unknown"
    s = scope("198.51.100.1", (b"x-api-key", b"secret-key"))
    key = key_for("api_key", s, TRUSTED, b"x-api-key")
    assert key == "k:" + hashed(b"secret-key")
    assert "secret" not in key
    assert key_for("user", s, TRUSTED, b"x-api-key") == "ip:198.51.100.1"


async def test_spoofing_through_the_middleware(make_limiter) -> None:
    cfg = RateLimitSettings(default="1/minute", key="ip", trusted_proxies=("10.0.0.0/8",))
    mw = make_limiter(cfg)
    async with client_for(mw, "203.0.113.50") as direct:
        assert (await direct.get("/", headers={"x-forwarded-for": "1.1.1.1"})).status_code == 200
        # a new forged address does not buy a new budget
        spoof = await direct.get("/", headers={"x-forwarded-for": "2.2.2.2"})
        assert spoof.status_code == 429
    async with client_for(mw, "10.0.0.5") as proxy:
        assert (await proxy.get("/", headers={"x-forwarded-for": "1.1.1.1"})).status_code == 200
        assert (await proxy.get("/", headers={"x-forwarded-for": "1.1.1.1"})).status_code == 429
        # behind the trusted proxy, a different client has its own budget
        assert (await proxy.get("/", headers={"x-forwarded-for": "2.2.2.2"})).status_code == 200
