from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freightscale.caching.entry import CacheEntry, CorruptEntry, decode_entry, encode_entry
from freightscale.caching.rules import (
    compile_rules,
    format_tags,
    match_rule,
    normalize_accept_encoding,
)
from freightscale.compression.negotiation import negotiate
from freightscale.exceptions import ConfigurationError
from freightscale.settings import FreightScaleSettings
from freightscale.settings.cache import CacheRule, CacheSettings


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "identity"),
        ("gzip, deflate, br", "br"),
        ("br;q=1, gzip;q=0.5", "br"),
        ("gzip", "gzip"),
        ("br;q=0, gzip", "gzip"),
        ("*", "br"),
        ("identity", "identity"),
        ("gzip;q=0.1, identity", "identity"),
        ("*;q=0", "identity"),
    ],
)
def test_normalize_accept_encoding(header: str | None, expected: str) -> None:
    assert normalize_accept_encoding(header) == expected


@given(st.text(max_size=120))
def test_normalization_agrees_with_the_compression_negotiation(header: str) -> None:
    # The cache's key and the compressor's choice must never disagree.
    offered = ("br", "zstd", "gzip")
    assert normalize_accept_encoding(header, offered) == (negotiate(header, offered) or "identity")


def test_rules_match_and_tags() -> None:
    rules = compile_rules(
        CacheSettings(rules=(CacheRule(path="/a/{id}"), CacheRule(path="/files/{rest:path}")))
    )
    found = match_rule(rules, "/a/42")
    assert found is not None
    assert found[1] == {"id": "42"}
    assert match_rule(rules, "/a/42/x") is None
    assert match_rule(rules, "/files/x/y.txt")[1] == {"rest": "x/y.txt"}  # type: ignore[index]
    assert format_tags(("s:{id}", "t:{tenant}", "u:{nope}"), {"id": "1"}, "acme", None) == [
        "s:1", "t:acme", "u:-",
    ]  # fmt: skip


def test_rule_validation_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FREIGHTSCALE_CACHE__RULES", '[{"path": "no-slash"}]')
    with pytest.raises(ConfigurationError, match="FREIGHTSCALE_CACHE__RULES"):
        FreightScaleSettings()


def test_entry_round_trip_and_corruption() -> None:
    entry = CacheEntry(200, [(b"content-type", b"application/json")], b"{}", 1.0, 2.0, 3.0, 4.0)
    data = encode_entry(entry)
    assert decode_entry(data) == entry
    for bad in (b"", b"garbage", data[:20], b"FSR1" + data[4:30]):
        with pytest.raises(CorruptEntry):
            decode_entry(bad)


def test_public_surfaces_are_sorted_and_importable() -> None:
    import freightscale.caching as caching
    import freightscale.compression as compression

    for module in (caching, compression):
        assert list(module.__all__) == sorted(module.__all__)
        for name in module.__all__:
            assert getattr(module, name) is not None
