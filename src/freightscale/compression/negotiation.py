"""``Accept-Encoding`` parsing and content-coding selection (RFC 9110 §12.5.3).

Substring matching (``"br" in header``) is wrong in both directions: it
accepts ``br;q=0`` (an explicit refusal) and ignores preferences. Here each
member is parsed with its weight; ``*`` stands for every coding not named;
``identity`` stays acceptable unless refused by ``identity;q=0`` or by
``*;q=0`` without an ``identity`` member; ties go to the server's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

__all__ = ["IDENTITY", "negotiate", "parse_accept_encoding"]

IDENTITY = "identity"
_ALIASES = {"x-gzip": "gzip"}
_MAX_MEMBERS = 32  # a hostile header with thousands of members costs nothing


def parse_accept_encoding(header: str) -> dict[str, float]:
    """Return ``{coding: q}`` for an ``Accept-Encoding`` value (lowercased codings).

    Malformed members are ignored; a malformed weight counts as ``q=0``
    (never as acceptance). A coding listed twice keeps its first weight.
    """
    weights: dict[str, float] = {}
    for member in header.split(",", _MAX_MEMBERS)[:_MAX_MEMBERS]:
        coding, _, params = member.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        coding = _ALIASES.get(coding, coding)
        q = 1.0
        for param in params.split(";"):
            name, sep, value = param.partition("=")
            if sep and name.strip().lower() == "q":
                q = _weight(value.strip())
        weights.setdefault(coding, q)
    return weights


def _weight(text: str) -> float:
    # RFC 9110 qvalue: 0(.ddd) or 1(.000); anything else refuses.
    try:
        q = float(text)
    except ValueError:
        return 0.0
    if not 0.0 <= q <= 1.0 or len(text) > 5:
        return 0.0
    return q


def negotiate(header: str | None, offered: Sequence[str]) -> str | None:
    """Choose the coding to send.

    Args:
        header: the request's ``Accept-Encoding`` value (None when absent).
        offered: codings the server can produce, in preference order.

    Returns:
        One of ``offered``, ``"identity"``, or None when the client refuses
        every coding including identity (the server may then send identity
        anyway or answer 406).
    """
    if header is None:
        # No header: any coding is acceptable, but identity is the safe choice.
        return IDENTITY
    if len(header) > 256:
        # Long (possibly hostile) values are not memoized.
        return _negotiate.__wrapped__(header, tuple(offered))
    return _negotiate(header, tuple(offered))


@lru_cache(maxsize=256)
def _negotiate(header: str, offered: tuple[str, ...]) -> str | None:
    weights = parse_accept_encoding(header)
    star = weights.get("*")
    best: str | None = None
    best_q = 0.0
    for coding in offered:
        q = weights.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    explicit_identity = weights.get(IDENTITY)
    if best is not None and (explicit_identity is None or explicit_identity <= best_q):
        return best
    identity_q = explicit_identity
    if identity_q is None:
        identity_q = star if star is not None else 1.0
    return IDENTITY if identity_q > 0 else None
