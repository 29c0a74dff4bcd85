"""Session ids, cookie signing and cookie headers.

A freightscale cookie is ``<id>.<mac>``: the id is 32 random bytes
(256 bits, base64url, 43 characters) and the mac is HMAC-SHA256 of the id
under the first secret key (43 characters). Verification tries every key in
constant time, so rotating keys never logs anyone out. Anything that is not
exactly that shape (truncated, oversized, non-ASCII) is rejected before any
cryptography runs.

The legacy express-session cookie is ``s:<sid>.<base64 HMAC-SHA256(sid)>``
without padding, URL-encoded (``cookie-signature``'s format).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from urllib.parse import unquote_to_bytes

__all__ = [
    "CookieSigner",
    "delete_cookie_header",
    "new_session_id",
    "read_cookie",
    "set_cookie_header",
    "verify_legacy_cookie",
]

_COOKIE_RE = re.compile(rb"\A([A-Za-z0-9_-]{43})\.([A-Za-z0-9_-]{43})\Z")
_LEGACY_ID_RE = re.compile(r"\A[A-Za-z0-9_-]{1,128}\Z")
_CONTEXT = b"freightscale.session.v1\x00"
# Cookie headers larger than this are not parsed for our cookie at all.
_MAX_HEADER = 16_384


def new_session_id() -> str:
    """Return a fresh random session id (256 bits, base64url, 43 characters)."""
    return secrets.token_urlsafe(32)


def _mac(key: bytes, session_id: bytes) -> bytes:
    # hmac.digest: the one-shot C implementation (several times faster than hmac.new).
    return base64.urlsafe_b64encode(hmac.digest(key, _CONTEXT + session_id, "sha256"))[:43]


class CookieSigner:
    """Signs session ids with the first key and verifies with all of them.

    Args:
        keys: secret keys, newest first (at least one).
    """

    def __init__(self, keys: Sequence[str], *, cache_size: int = 4096) -> None:
        if not keys:
            raise ValueError("CookieSigner needs at least one secret key")
        self._keys = [k.encode() for k in keys]
        # Verified cookie values only: a returning client skips the HMAC. A plain
        # dict (cleared when full) is bounded and cheaper than an LRU's bookkeeping.
        self._verified: dict[bytes, str] = {}
        self._cache_size = cache_size

    def __repr__(self) -> str:
        return f"CookieSigner(keys=<{len(self._keys)} masked>)"

    def sign(self, session_id: str) -> str:
        """Return the cookie value for ``session_id``."""
        raw = session_id.encode("ascii")
        return (raw + b"." + _mac(self._keys[0], raw)).decode("ascii")

    def unsign(self, value: bytes | None) -> str | None:
        """Return the session id in a cookie value, or None if it is not one of ours."""
        if value is None:
            return None
        cached = self._verified.get(value)
        if cached is not None:
            return cached
        match = _COOKIE_RE.match(value)
        if match is None:
            return None
        raw, mac = match.group(1), match.group(2)
        valid = False
        for key in self._keys:
            # No early exit: every key is tried, so timing does not tell which matched.
            valid |= hmac.compare_digest(_mac(key, raw), mac)
        if not valid:
            return None
        session_id = raw.decode("ascii")
        if len(self._verified) >= self._cache_size:
            self._verified.clear()
        self._verified[bytes(value)] = session_id
        return session_id


def verify_legacy_cookie(value: bytes | None, secrets_: Iterable[str]) -> str | None:
    """Return the session id of a valid legacy ``connect.sid`` value, else None.

    The value is URL-decoded, must read ``s:<sid>.<mac>`` and its mac must
    match one of ``secrets_`` (constant-time comparison).
    """
    if value is None or len(value) > 1024:
        return None
    try:
        text = unquote_to_bytes(value).decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text.startswith("s:"):
        return None
    sid, dot, mac = text[2:].rpartition(".")
    if not dot or not _LEGACY_ID_RE.match(sid):
        return None
    valid = False
    for secret in secrets_:
        digest = hmac.new(secret.encode(), sid.encode(), hashlib.sha256).digest()
        expected = base64.b64encode(digest).decode().rstrip("=")
        valid |= hmac.compare_digest(expected.encode(), mac.encode())
    return sid if valid else None


def read_cookie(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """Return the raw value of cookie ``name`` from ASGI headers (the first one), or None.

    Works on bytes, so a non-UTF-8 header is not an error; an oversized
    ``Cookie`` header is ignored.
    """
    for key, raw in headers:
        if key != b"cookie" or len(raw) > _MAX_HEADER:
            continue
        for part in raw.split(b";"):
            k, eq, v = part.strip().partition(b"=")
            if eq and k == name:
                return v.strip().strip(b'"')
    return None


def set_cookie_header(
    name: str,
    value: str,
    *,
    max_age: int,
    path: str,
    domain: str | None,
    secure: bool,
    http_only: bool,
    same_site: str,
) -> tuple[bytes, bytes]:
    """Return the ``Set-Cookie`` header pair for a session cookie."""
    parts = [f"{name}={value}", f"Max-Age={max_age}", f"Path={path}"]
    if domain:
        parts.append(f"Domain={domain}")
    if secure:
        parts.append("Secure")
    if http_only:
        parts.append("HttpOnly")
    parts.append(f"SameSite={same_site.capitalize()}")
    return b"set-cookie", "; ".join(parts).encode("latin-1")


def delete_cookie_header(
    name: str, *, path: str, domain: str | None, secure: bool, http_only: bool, same_site: str
) -> tuple[bytes, bytes]:
    """Return a ``Set-Cookie`` header pair that expires cookie ``name``."""
    name_, value = set_cookie_header(
        name,
        "",
        max_age=0,
        path=path,
        domain=domain,
        secure=secure,
        http_only=http_only,
        same_site=same_site,
    )
    return name_, value.replace(b"Max-Age=0", b"Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT")
