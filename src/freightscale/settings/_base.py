"""Shared base for settings sections and URL validation helpers."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

__all__ = ["Section", "check_url_scheme"]


class Section(BaseModel):
    """Base of every component's settings section.

    A plain pydantic model: built in code with keyword arguments, or read as
    one nested section of :class:`~freightscale.settings.FreightScaleSettings`.
    Unknown fields are rejected so a typo never passes silently.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_default=True,
        use_attribute_docstrings=True,
    )


def check_url_scheme(url: str, allowed: tuple[str, ...]) -> str:
    """Return ``url`` unchanged if its scheme is one of ``allowed``.

    An empty string is allowed and means "the embedded default".

    Raises:
        ValueError: with a message naming the bad scheme and the allowed ones.
    """
    if not url:
        return url
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme not in allowed:
        shown = scheme or url[:40]
        raise ValueError(f"scheme {shown!r} is not one of {', '.join(allowed)}")
    return url
