"""Capturing a response for the cache, and sending a cached one.

``ResponseCapture`` wraps ``send``: a storable response is buffered (up to
``max_body_bytes``) and turned into a :class:`CacheEntry`; anything else is
streamed straight through, unbuffered, as soon as its start message shows it
cannot be stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

from freightscale.caching.entry import CacheEntry
from freightscale.types import Message, Receive, Send

__all__ = [
    "ResponseCapture",
    "discard",
    "etag_matches",
    "has_cookie",
    "labelled",
    "no_body",
    "send_entry",
]

_MAX_AGE = re.compile(r"(?:^|,)\s*(s-maxage|max-age)\s*=\s*\"?(\d+)", re.IGNORECASE)
_DROP = frozenset({b"age", b"x-cache", b"content-length", b"etag"})
_NOT_MODIFIED_KEEP = frozenset(
    {
        b"etag",
        b"cache-control",
        b"vary",
        b"date",
        b"expires",
        b"content-location",
        b"surrogate-control",
        b"cdn-cache-control",
    }
)


class ResponseCapture:
    """Decide storability at ``http.response.start``; buffer or pass through.

    Args:
        send: the client's ``send``.
        statuses: storable statuses.
        allow_private: the rule is per-user, so ``Cache-Control: private`` may be stored.
        vary_ok: request headers the key covers (lowercase bytes).
        max_body: largest body kept.
        tag_header: response header carrying tags (removed before sending).
        swallow_errors: a stale copy can replace a 5xx: hold it back.
    """

    __slots__ = (
        "allow_private",
        "body",
        "chunks",
        "done",
        "failed",
        "max_age",
        "max_body",
        "mode",
        "send_",
        "start",
        "statuses",
        "swallow_errors",
        "tag_header",
        "tags",
        "vary_ok",
    )  # fmt: skip

    def __init__(
        self,
        send: Send,
        *,
        statuses: frozenset[int],
        allow_private: bool,
        vary_ok: frozenset[bytes],
        max_body: int,
        tag_header: bytes,
        swallow_errors: bool,
    ) -> None:
        self.send_ = send
        self.statuses = statuses
        self.allow_private = allow_private
        self.vary_ok = vary_ok
        self.max_body = max_body
        self.tag_header = tag_header
        self.swallow_errors = swallow_errors
        self.mode = "pending"  # buffer | pass | swallow
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.body = 0
        self.done = False
        self.tags: list[str] = []
        self.max_age: float | None = None
        self.failed = False

    @property
    def started(self) -> bool:
        """True once anything reached the client."""
        return self.mode == "pass"

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._on_start(message)
            if self.mode == "pass":
                await self.send_(message)
            return
        if self.mode == "swallow":
            return
        if self.mode == "pass":
            await self.send_(message)
            return
        if kind != "http.response.body":
            await self._give_up(message)
            return
        body: bytes = message.get("body", b"")
        if self.body + len(body) > self.max_body:
            await self._give_up(message)
            return
        self.body += len(body)
        self.chunks.append(body)
        if not message.get("more_body", False):
            self.done = True

    def _on_start(self, message: Message) -> None:
        status: int = message["status"]
        headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
        kept = []
        for name, value in headers:
            if name == self.tag_header:
                self.tags.extend(t.strip() for t in value.decode("latin-1").split(",") if t.strip())
            else:
                kept.append((name, value))
        message["headers"] = kept
        if status >= 500 and self.swallow_errors:
            self.mode = "swallow"
            self.failed = True
            return
        if self._storable(status, kept):
            self.start = message
            self.mode = "buffer"
        else:
            kept.append((b"x-cache", b"MISS"))
            self.mode = "pass"

    def _storable(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        if status not in self.statuses:
            return False
        for name, value in headers:
            if name == b"set-cookie" or name == b"content-range":
                return False
            if name == b"cache-control":
                directives = value.decode("latin-1").lower()
                if "no-store" in directives or "no-cache" in directives:
                    return False
                if "private" in directives and not self.allow_private:
                    return False
                m = _MAX_AGE.findall(directives)
                if m:
                    # s-maxage wins over max-age for a shared cache.
                    found = {k.lower(): int(v) for k, v in m}
                    self.max_age = float(found.get("s-maxage", found.get("max-age", 0)))
            elif name == b"vary":
                for field in value.lower().split(b","):
                    field = field.strip()
                    if field == b"*" or (field and field not in self.vary_ok):
                        return False
        return True

    async def _give_up(self, message: Message) -> None:
        """Too big (or not a plain body): stream what we held, then the rest."""
        assert self.start is not None
        self.start["headers"].append((b"x-cache", b"MISS"))
        self.mode = "pass"
        await self.send_(self.start)
        for chunk in self.chunks:
            await self.send_({"type": "http.response.body", "body": chunk, "more_body": True})
        self.chunks = []
        await self.send_(message)

    def entry(self, now: float, ttl: float, swr: float, sie: float) -> CacheEntry | None:
        """Return the captured response as an entry (None unless fully buffered)."""
        if self.mode != "buffer" or not self.done or self.start is None:
            return None
        if self.max_age is not None:
            ttl = min(ttl, self.max_age)
        body = b"".join(self.chunks)
        headers = [(n, v) for n, v in self.start["headers"] if n not in _DROP]
        etag = next((v for n, v in self.start["headers"] if n == b"etag"), None)
        if etag is None or etag.startswith(b"W/"):
            etag = b'"' + hashlib.blake2b(body, digest_size=16).hexdigest().encode() + b'"'
        headers.append((b"etag", etag))
        if self.start["status"] not in (204, 304):
            headers.append((b"content-length", str(len(body)).encode()))
        fresh = now + ttl
        return CacheEntry(self.start["status"], headers, body, now, fresh, fresh + swr, fresh + sie)


def etag_matches(if_none_match: bytes, etag: bytes | None) -> bool:
    """Weak comparison of ``If-None-Match`` against an ETag (RFC 9110 §13.1.2)."""
    if etag is None:
        return False
    if if_none_match.strip() == b"*":
        return True
    wanted = etag.removeprefix(b"W/")
    return any(tag.strip().removeprefix(b"W/") == wanted for tag in if_none_match.split(b","))


async def send_entry(
    send: Send,
    entry: CacheEntry,
    label: bytes,
    now: float,
    *,
    head: bool,
    if_none_match: bytes | None,
) -> None:
    """Send a cached entry as stored: no decoding, no re-encoding of the body."""
    age = str(max(0, int(now - entry.stored_at))).encode()
    if (
        if_none_match is not None
        and entry.status == 200  # a validator only stands for a successful representation
        and etag_matches(if_none_match, entry.header(b"etag"))
    ):
        headers = [(n, v) for n, v in entry.headers if n in _NOT_MODIFIED_KEEP]
        headers += [(b"age", age), (b"x-cache", label)]
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [*entry.headers, (b"age", age), (b"x-cache", label)]
    await send({"type": "http.response.start", "status": entry.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else entry.body})


def has_cookie(header: bytes, names: frozenset[bytes]) -> bool:
    """True when the ``Cookie`` header names one of ``names``."""
    for pair in header.split(b";"):
        name = pair.partition(b"=")[0].strip()
        if name in names:
            return True
    return False


def labelled(send: Send, label: bytes, tag_header: bytes) -> Send:
    """Wrap ``send``: drop the tag header and add ``X-Cache: <label>``."""

    async def wrapper(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(n, v) for n, v in message.get("headers", []) if n != tag_header]
            headers.append((b"x-cache", label))
            message["headers"] = headers
        await send(message)

    return wrapper


async def discard(message: Message) -> None:
    """A ``send`` that drops everything (background refreshes)."""
    return None


def no_body() -> Receive:
    """A ``receive`` with an empty body that never disconnects (bounded by a timeout)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # never disconnects; the timeout bounds it
        return {"type": "http.disconnect"}

    return receive
