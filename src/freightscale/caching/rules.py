"""Cache rules compiled once, and the cache key of a request.

The key is a digest of everything that may change the body and nothing
else: method class, host, root path, path, the sorted query, the normalized
values of the rule's ``vary`` headers, the normalized ``Accept-Encoding``
and the rule's scope (tenant id or principal id). Headers that are not in
the key never reach the app (see ``unkeyed_headers``), so they cannot
poison an entry.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode

from freightscale.settings.cache import CacheRule, CacheSettings

if TYPE_CHECKING:
    from freightscale.context import Principal

__all__ = [
    "CompiledRule",
    "cache_key",
    "compile_rules",
    "format_tags",
    "match_rule",
    "normalize_accept_encoding",
    "role_scope_id",
]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(path|str))?\}")
_CODINGS = ("br", "zstd", "gzip")


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A :class:`CacheRule` with its regex and resolved TTL."""

    rule: CacheRule
    regex: re.Pattern[str]
    ttl: float
    vary: tuple[bytes, ...]


def compile_rules(settings: CacheSettings) -> list[CompiledRule]:
    """Compile ``settings.rules`` in order."""
    return [
        CompiledRule(
            rule,
            _compile_path(rule.path),
            rule.ttl if rule.ttl is not None else settings.default_ttl,
            tuple(v.encode("latin-1") for v in rule.vary if v != "accept-encoding"),
        )
        for rule in settings.rules
    ]


def _compile_path(pattern: str) -> re.Pattern[str]:
    out, last = [], 0
    for m in _PARAM.finditer(pattern):
        out.append(re.escape(pattern[last : m.start()]))
        out.append(f"(?P<{m[1]}>.*)" if m[2] == "path" else f"(?P<{m[1]}>[^/]+)")
        last = m.end()
    out.append(re.escape(pattern[last:]))
    return re.compile("".join(out) + r"\Z")


def match_rule(rules: list[CompiledRule], path: str) -> tuple[CompiledRule, dict[str, str]] | None:
    """Return the first rule whose pattern matches ``path`` and its parameters."""
    for compiled in rules:
        m = compiled.regex.match(path)
        if m is not None:
            return compiled, m.groupdict()
    return None


@lru_cache(maxsize=512)
def _normalize_cached(header: str, offered: tuple[str, ...]) -> str:
    return _normalize(header, offered)


def normalize_accept_encoding(header: str | None, offered: tuple[str, ...] = _CODINGS) -> str:
    """Reduce ``Accept-Encoding`` to the one coding the response will use.

    Returns one of ``offered`` or ``"identity"``, chosen like the compression
    middleware chooses (q-values, ``q=0`` refusals, ``*``, ties to the order
    of ``offered``). The cache keys on it and the app behind the cache sees
    only it, so ``"gzip, deflate, br"`` and ``"br;q=1, gzip;q=0.5"`` share
    the ``br`` variant and a hit costs no compression work.
    """
    if not header:
        return "identity"
    if len(header) <= 200:  # memoize the few values real clients send
        return _normalize_cached(header, offered)
    return _normalize(header, offered)


def _normalize(header: str, offered: tuple[str, ...]) -> str:
    weights: dict[str, float] = {}
    for member in header.split(",", 32)[:32]:
        coding, _, params = member.partition(";")
        coding = coding.strip().lower()
        coding = "gzip" if coding == "x-gzip" else coding
        q = 1.0
        for param in params.split(";"):
            name, sep, value = param.partition("=")
            if sep and name.strip().lower() == "q":
                q = _weight(value.strip())
        if coding:
            weights.setdefault(coding, q)
    star = weights.get("*")
    best, best_q = "identity", 0.0
    for coding in offered:
        q = weights.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    identity = weights.get("identity")
    if identity is not None and identity > best_q:
        return "identity"
    return best


def _weight(text: str) -> float:
    try:
        q = float(text)
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 and len(text) <= 5 else 0.0


def cache_key(
    *,
    scope_kind: str,
    scope_id: str,
    host: str,
    root_path: str,
    path: str,
    query_string: bytes,
    vary_values: list[str],
    accept_encoding: str,
) -> str:
    """Return the store key of a request (``r:<scope kind>:{<digest>}``).

    The digest is a Redis hash tag: the entry's fill lock (``l:`` + key)
    lives in the same Cluster slot, so one script can look up and lock.
    """
    args = (scope_kind, scope_id, host, root_path, path, query_string, tuple(vary_values))
    if len(path) + len(query_string) <= 512:
        # Hot keys repeat: a bounded memo skips the parse, format and digest.
        return _key_cached(*args, accept_encoding)
    return _key(*args, accept_encoding)


def _key(
    scope_kind: str,
    scope_id: str,
    host: str,
    root_path: str,
    path: str,
    query_string: bytes,
    vary_values: tuple[str, ...],
    accept_encoding: str,
) -> str:
    query = ""
    if query_string:
        pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
        query = urlencode(sorted(pairs))
    # Length-prefixed parts: unambiguous whatever characters the parts hold.
    parts = [scope_id, host.lower(), root_path, path, query, accept_encoding, *vary_values]
    material = "".join(f"{len(p)}:{p}" for p in parts)
    digest = hashlib.blake2b(material.encode("utf-8", "surrogatepass"), digest_size=20)
    return f"r:{scope_kind}:{{{digest.hexdigest()}}}"


_key_cached = lru_cache(maxsize=4096)(_key)


def role_scope_id(principal: Principal) -> str:
    """Scope id of a ``role`` rule: the tenant and what the principal may do.

    Principals of one tenant with the same roles, scopes and resolved
    permissions pass the same permission checks, so they may share an entry.
    Permissions are part of the id: when a role's permissions change, its
    holders stop matching entries cached under the old grant at once.
    """
    return _role_scope_id(
        principal.tenant_id or "", principal.roles, principal.scopes, principal.permissions
    )


@lru_cache(maxsize=4096)
def _role_scope_id(
    tenant: str, roles: frozenset[str], scopes: frozenset[str], permissions: frozenset[str]
) -> str:
    # Counted groups of length-prefixed parts: unambiguous whatever names hold.
    parts = [tenant]
    for group in (roles, scopes, permissions):
        parts += [str(len(group)), *sorted(group)]
    material = "".join(f"{len(p)}:{p}" for p in parts)
    digest = hashlib.blake2b(material.encode("utf-8", "surrogatepass"), digest_size=16)
    return "g:" + digest.hexdigest()


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "-"


def format_tags(
    templates: tuple[str, ...], params: dict[str, str], tenant: str | None, user: str | None
) -> list[str]:
    """Fill ``{param}``, ``{tenant}`` and ``{user}`` in tag templates."""
    values = _Blank(params)
    values["tenant"] = tenant or "-"
    values["user"] = user or "-"
    out = []
    for template in templates:
        try:
            out.append(template.format_map(values))
        except (ValueError, IndexError, AttributeError):
            out.append(template)
    return out
