"""The public surface of freightscale.auth and construction-time checks."""

from __future__ import annotations

import pytest

import freightscale.auth as auth
from freightscale.auth import AuthMiddleware
from freightscale.context import Principal
from freightscale.exceptions import ConfigurationError
from freightscale.settings.auth import AuthSettings
from tests.auth.conftest import make_app


def test_all_is_sorted_and_importable() -> None:
    assert auth.__all__ == sorted(auth.__all__)
    for name in auth.__all__:
        assert getattr(auth, name) is not None


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        (AuthSettings(algorithms=["HS256"]), "SECRET is empty"),
        (AuthSettings(algorithms=["RS256"]), "PUBLIC_KEY"),
        (AuthSettings(algorithms=["RS256"], public_key="not a pem"), "not a PEM public key"),
    ],
)
def test_middleware_refuses_settings_without_keys(settings: AuthSettings, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        AuthMiddleware(make_app(), settings)


def test_middleware_needs_settings_or_authenticator() -> None:
    with pytest.raises(ConfigurationError, match="AuthSettings"):
        AuthMiddleware(make_app())


def test_principal_stays_backwards_compatible() -> None:
    principal = Principal("u", "t", frozenset({"r"}), frozenset({"s"}), {"sub": "u"})
    assert principal.permissions == frozenset()
    assert not principal.has_permission("anything")
    assert principal.is_authenticated
    assert principal.display_name == "u"
