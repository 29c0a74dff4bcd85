"""Redis URLs: the forms :func:`~freightscale.backends.redis.create_redis_client` accepts.

Private to :mod:`freightscale.backends.redis`, which re-exports
:class:`RedisTarget` and :func:`parse_redis_url` and lists the URL forms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote

from freightscale.exceptions import ConfigurationError
from freightscale.settings.redis import REDIS_SCHEMES


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL."""

    kind: Literal["single", "sentinel", "cluster"]
    nodes: tuple[tuple[str, int], ...]
    ssl: bool = False
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    service_name: str | None = None
    url: str = field(default="", repr=False)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse any URL :func:`create_redis_client` accepts.

    Raises:
        ConfigurationError: naming the problem (scheme, host list, port, db).
    """
    if "://" not in url:
        raise ConfigurationError(
            f"redis URL {url[:40]!r} has no scheme; expected redis://host:port"
        )
    scheme, rest = url.split("://", 1)
    if scheme not in REDIS_SCHEMES:
        raise ConfigurationError(
            f"redis URL scheme {scheme!r} is not one of {', '.join(REDIS_SCHEMES)}"
        )
    rest, _, query = rest.partition("?")
    userinfo, _, hostpart = rest.rpartition("@")
    hosts, _, path = hostpart.partition("/")
    username = password = None
    if userinfo:
        user, sep, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
    nodes = tuple(_parse_node(h, url) for h in hosts.split(",") if h)
    if not nodes:
        raise ConfigurationError(f"redis URL {_mask(url)!r} names no host")
    segments = [s for s in path.split("/") if s]
    options = parse_qs(query)
    if scheme == "redis+sentinel":
        if not segments:
            raise ConfigurationError(
                f"sentinel URL {_mask(url)!r} needs the master name: redis+sentinel://h1:26379/mymaster"
            )
        service, db_part = segments[0], segments[1] if len(segments) > 1 else "0"
        return RedisTarget(
            "sentinel", nodes, "ssl" in options, _db(db_part, url), username, password, service, url
        )
    if scheme == "redis+cluster":
        if segments and segments[0] != "0":
            raise ConfigurationError(f"cluster URL {_mask(url)!r}: Redis Cluster has only db 0")
        return RedisTarget("cluster", nodes, "ssl" in options, 0, username, password, None, url)
    if len(nodes) != 1:
        raise ConfigurationError(
            f"redis URL {_mask(url)!r} names {len(nodes)} hosts; use redis+cluster:// or "
            "redis+sentinel:// for several"
        )
    db = _db(segments[0], url) if segments else 0
    return RedisTarget("single", nodes, scheme == "rediss", db, username, password, None, url)


def _parse_node(text: str, url: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "6379"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"redis URL {_mask(url)!r}: bad host:port {text!r}")
    return host, int(port)


def _db(text: str, url: str) -> int:
    if not text.isdigit():
        raise ConfigurationError(f"redis URL {_mask(url)!r}: database {text!r} is not a number")
    return int(text)


def _mask(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"
