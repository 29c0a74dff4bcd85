from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freightscale.compression.negotiation import negotiate, parse_accept_encoding

OFFERED = ("br", "zstd", "gzip")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "identity"),
        ("", "identity"),
        ("gzip", "gzip"),
        ("gzip, br", "br"),  # tie: server preference
        ("br;q=0, gzip", "gzip"),  # q=0 refuses, substring matching gets this wrong
        ("BR;Q=0, GZIP", "gzip"),
        ("gzip;q=0.5, br;q=0.4", "gzip"),
        ("br;q=0.9, zstd;q=1", "zstd"),
        ("*", "br"),
        ("*;q=0.1, br;q=0", "zstd"),
        ("*;q=0", None),  # nothing, not even identity
        ("*;q=0, identity", "identity"),
        ("identity;q=0", None),
        ("gzip;q=0.2, identity;q=1", "identity"),
        ("gzip;q=garbage", "identity"),  # a malformed weight never means acceptance
        ("gzip;q=1.5", "identity"),
        ("x-gzip", "gzip"),
        ("deflate, compress", "identity"),
        ("brotli", "identity"),  # not a substring match on "br"
        (" ,,; ,br", "br"),
    ],
)
def test_negotiate(header: str | None, expected: str | None) -> None:
    assert negotiate(header, OFFERED) == expected


def test_parse_keeps_first_weight_and_bounds_members() -> None:
    assert parse_accept_encoding("gzip;q=0, gzip") == {"gzip": 0.0}
    many = ",".join(f"c{i}" for i in range(10_000))
    assert len(parse_accept_encoding(many)) <= 32


@given(st.text(max_size=300))
def test_negotiate_never_raises_and_respects_refusals(header: str) -> None:
    chosen = negotiate(header, OFFERED)
    assert chosen in (*OFFERED, "identity", None)
    if chosen in OFFERED:
        weights = parse_accept_encoding(header)
        q = weights.get(chosen, weights.get("*", 0.0))
        assert q > 0
