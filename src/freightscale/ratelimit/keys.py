"""Key functions: who a request is counted against.

The client IP comes from ``X-Forwarded-For`` / ``Forwarded`` **only** when
the direct peer is a trusted proxy; otherwise any client could pick its own
key by sending the header. Behind trusted proxies the chain is read from the
right, skipping trusted hops, so the first untrusted address is the client
(what uvicorn's ``ProxyHeadersMiddleware`` does). Header values are bounded
and validated: garbage falls back to the peer address, never to an error.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from typing import TypeAlias

from freightscale.context import get_principal
from freightscale.types import Scope

__all__ = ["ClientIP", "TrustedProxies", "hashed", "key_for"]

_Network: TypeAlias = "ipaddress.IPv4Network | ipaddress.IPv6Network"
_MAX_HEADER = 4096  # bytes of a forwarding header we look at
_MAX_HOPS = 32
_FOR_RE = re.compile(r'(?i)(?:^|[;,\s])for\s*=\s*("[^"]*"|[^;,\s]*)')
_UNKNOWN = "unknown"


def hashed(value: str | bytes, size: int = 20) -> str:
    """A short stable digest, so secrets and hostile values never reach Redis raw."""
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return hashlib.blake2b(data, digest_size=size).hexdigest()


def _parse_ip(text: str) -> str | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: for="[2001:db8::1]:4711"
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # v4 with a port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None


class TrustedProxies:
    """A set of trusted proxy networks, parsed once."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks
        )

    def __contains__(self, address: object) -> bool:
        if not self.networks or not isinstance(address, str):
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)


class ClientIP:
    """Extracts the client address from a scope, honouring trusted proxies only."""

    def __init__(self, trusted: TrustedProxies) -> None:
        self.trusted = trusted
        self._any_trusted = bool(trusted)

    def __call__(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = str(client[0]) if client else _UNKNOWN
        if not self._any_trusted or peer not in self.trusted:
            return peer
        chain = self._chain(scope)
        # Walk from the nearest hop outwards; the first untrusted one is the client.
        for hop in reversed(chain[-_MAX_HOPS:]):
            if hop not in self.trusted:
                return hop
        return chain[0] if chain else peer

    @staticmethod
    def _chain(scope: Scope) -> list[str]:
        forwarded: list[bytes] = []
        xff: list[bytes] = []
        for name, value in scope.get("headers", ()):
            if name == b"forwarded":
                forwarded.append(value[:_MAX_HEADER])
            elif name == b"x-forwarded-for":
                xff.append(value[:_MAX_HEADER])
        if forwarded:  # RFC 7239 wins over the de-facto header when both are present
            text = b",".join(forwarded)[:_MAX_HEADER].decode("latin-1")
            raw = [m.group(1) for m in _FOR_RE.finditer(text)]
        else:
            text = b",".join(xff)[:_MAX_HEADER].decode("latin-1")
            raw = text.split(",")
        hops: list[str] = []
        for item in raw[-_MAX_HOPS:]:
            ip = _parse_ip(item)
            if ip is None:
                # An unparsable hop ends what we can trust: stop before it.
                hops = []
                continue
            hops.append(ip)
        return hops


def key_for(kind: str, scope: Scope, client_ip: ClientIP, api_key_header: bytes) -> str:
    """The key of a built-in kind; requests without a principal/API key fall back to the IP."""
    if kind == "user":
        principal = get_principal(scope)
        if principal is not None:
            return "u:" + principal.user_id
    elif kind == "tenant":
        principal = get_principal(scope)
        if principal is not None:
            if principal.tenant_id is not None:
                return "t:" + principal.tenant_id
            return "u:" + principal.user_id
    elif kind == "api_key":
        for name, value in scope.get("headers", ()):
            if name == api_key_header and value:
                return "k:" + hashed(value[:_MAX_HEADER])
    return "ip:" + client_ip(scope)
