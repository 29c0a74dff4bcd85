"""Rules and settings: validation messages, path patterns, header rendering."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from freightscale.exceptions import ConfigurationError
from freightscale.ratelimit import Rule
from freightscale.ratelimit.headers import SingleLimitHeaders, render_headers, retry_after
from freightscale.ratelimit.rules import compile_path, parse_limits, rules_from_settings
from freightscale.ratelimit.storage import LimitState
from freightscale.settings import FreightScaleSettings
from freightscale.settings.ratelimit import RateLimitSettings, RouteLimit


def test_malformed_rule_in_environment_names_the_variable(monkeypatch) -> None:
    monkeypatch.setenv("FREIGHTSCALE_RATELIMIT__DEFAULT", "10/secnd")
    with pytest.raises(ConfigurationError) as info:
        FreightScaleSettings()
    message = str(info.value)
    assert "FREIGHTSCALE_RATELIMIT__DEFAULT" in message
    assert "10/secnd" in message
    assert "10/second; 1000/hour" in message


def test_malformed_route_rule_and_networks() -> None:
    with pytest.raises(ValidationError, match="not a rate-limit string"):
        RouteLimit(path="/x", limits="many per day")
    with pytest.raises(ValidationError, match="limits"):
        RateLimitSettings(routes=({"path": "/x", "limits": "0/second"},))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="not an IP network"):
        RateLimitSettings(trusted_proxies=("10.0.0.0/33",))
    with pytest.raises(ConfigurationError, match="rule 'x'"):
        Rule.create("x", "ten per second")


def test_routes_from_environment_json(monkeypatch) -> None:
    monkeypatch.setenv(
        "FREIGHTSCALE_RATELIMIT__ROUTES",
        '[{"path": "/login", "methods": ["post"], "limits": "5/minute", "key": "ip"}]',
    )
    rules = rules_from_settings(FreightScaleSettings().ratelimit)
    assert [r.name for r in rules] == ["login-post", "default"]
    assert rules[0].match.matches("/login", "POST")
    assert not rules[0].match.matches("/login", "GET")
    assert rules[0].key == "ip"
    assert rules[1].key == "user"


def test_ip_layer_rules() -> None:
    assert rules_from_settings(RateLimitSettings(), layer="ip") == []
    (rule,) = rules_from_settings(RateLimitSettings(ip_limits="50/second"), layer="ip")
    assert rule.name == "ip"
    assert rule.key == "ip"
    assert rule.limits[0].amount == 50


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/a/*", "/a/b", True),
        ("/a/*", "/a/b/c", False),
        ("/a/**", "/a/b/c", True),
        ("/s/{id}/docs", "/s/42/docs", True),
        ("/s/{id}/docs", "/s//docs", False),
        ("/exact", "/exact/", True),
        ("/exact", "/exactly", False),
        ("/a.b", "/aXb", False),
    ],
)
def test_path_patterns(pattern: str, path: str, matches: bool) -> None:
    assert (compile_path(pattern).fullmatch(path) is not None) is matches


def test_render_headers_styles() -> None:
    (item,) = parse_limits("100/minute")
    states = [LimitState(item, True, 42, 1017.2)]
    draft = dict(render_headers('we"ird', states, ("draft",), 1000.0))
    assert draft == {b"ratelimit-policy": b'"weird";q=100;w=60', b"ratelimit": b'"weird";r=42;t=18'}
    legacy = dict(render_headers("r", states, ("legacy", "x"), 1000.0))
    assert legacy[b"ratelimit-reset"] == b"18"
    assert legacy[b"x-ratelimit-reset"] == b"1018"
    assert render_headers("r", states, (), 1000.0) == []
    refused = [LimitState(item, False, 0, 1030.5), LimitState(item, True, 3, 1100.0)]
    assert retry_after(refused, 1000.0) == 31
    assert retry_after(states, 1000.0) == 1


@pytest.mark.parametrize(
    ("remaining", "reset_at", "now"),
    [(42, 1017.2, 1000.0), (0, 1000.0, 1000.0), (7, 999.0, 1000.0), (1, 1000.000001, 1000.0)],
)
def test_single_limit_headers_render_what_render_headers_does(
    remaining: int, reset_at: float, now: float
) -> None:
    (item,) = parse_limits("100/minute")
    precomputed = SingleLimitHeaders('we"ird', item.amount, item.get_expiry())
    expected = render_headers(
        'we"ird', [LimitState(item, True, remaining, reset_at)], ("draft",), now
    )
    assert precomputed.render(remaining, reset_at, now) == expected
