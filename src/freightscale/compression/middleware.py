"""``CompressionMiddleware``: negotiated brotli / gzip / zstd, streaming-safe.

Follows Starlette's gzip recipe (hold ``http.response.start`` until the first
body chunk, fix ``Content-Length``, add ``Vary``) and fixes what it gets
wrong: q-values are honoured (``br;q=0`` refuses brotli), streamed bodies are
flushed chunk by chunk instead of waiting in the compressor, ranges and 206
responses pass through, ETags are weakened, nothing is compressed twice.
"""

from __future__ import annotations

from freightscale.compression.encoders import Encoder, available_encodings, compress, new_encoder
from freightscale.compression.negotiation import IDENTITY, negotiate
from freightscale.context import SCOPE_KEY
from freightscale.settings.compression import CompressionSettings
from freightscale.telemetry import get_counter
from freightscale.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CACHE_FILL_KEY", "CompressionMiddleware"]

CACHE_FILL_KEY = "cache_fill"
"""Key in ``scope["freightscale"]`` a response cache sets (True) when the
response it is about to compute will be stored: the cached levels apply."""

_UNCOMPRESSIBLE_STATUS = frozenset({204, 206, 304})
_responses = get_counter("freightscale.compression.responses")  # encoding
_bytes = get_counter("freightscale.compression.bytes")  # encoding, direction
_IDENTITY = _responses.series({"encoding": IDENTITY})
# Response header names read when the body starts (names are lowercase in ASGI).
_WATCHED = frozenset(
    {b"content-type", b"content-encoding", b"content-range", b"cache-control", b"content-length"}
)
_MEMO_SIZE = 256  # per-instance memo of Accept-Encoding / Content-Type decisions
_MEMO_VALUE_MAX = 256  # longer (possibly hostile) values are decided but not memoized


class CompressionMiddleware:
    """Compress responses with the best coding the client accepts.

    Args:
        app: the ASGI app to wrap.
        config: the compression settings section (defaults when omitted).
    """

    def __init__(self, app: ASGIApp, config: CompressionSettings | None = None) -> None:
        self.app = app
        self.config = config = config or CompressionSettings()
        self.offered = available_encodings(config.encodings)
        self.levels = {"br": config.brotli_quality, "gzip": config.gzip_level}
        self.levels["zstd"] = config.zstd_level
        self.cached_levels = {
            "br": config.cached_brotli_quality,
            "gzip": config.cached_gzip_level,
            "zstd": config.cached_zstd_level,
        }
        types = [t.lower() for t in config.compressible_types]
        self._type_prefixes = tuple(t for t in types if t.endswith("/"))
        self._types = frozenset(t for t in types if not t.endswith("/"))
        self.minimum_size = config.minimum_size
        # Decisions that depend only on one header value, memoized (bounded).
        self._choices: dict[bytes | None, str] = {None: IDENTITY}
        self._compressible: dict[bytes, bool] = {}
        # Metric attributes per coding, built once instead of per response.
        self._labels = {e: _Labels(e) for e in ("br", "gzip", "zstd")}

    def __repr__(self) -> str:
        return f"CompressionMiddleware(offered={self.offered!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accept: bytes | None = None
        ranged = False
        for name, value in scope["headers"]:
            if name == b"accept-encoding":
                accept = value
            elif name == b"range":
                ranged = True
        encoding = self._choices.get(accept)
        if encoding is None:
            encoding = self._choose(accept)
        if ranged or scope["method"] == "HEAD":
            encoding = IDENTITY
        state = scope.get(SCOPE_KEY)
        cached = bool(state and state.get(CACHE_FILL_KEY))
        responder = _Responder(self, send, encoding, cached)
        await self.app(scope, receive, responder.send)

    def _choose(self, accept: bytes | None) -> str:
        encoding = negotiate(None if accept is None else accept.decode("latin-1"), self.offered)
        encoding = encoding or IDENTITY
        if accept is not None and len(accept) <= _MEMO_VALUE_MAX:
            if len(self._choices) >= _MEMO_SIZE:
                self._choices.clear()
                self._choices[None] = IDENTITY
            self._choices[accept] = encoding
        return encoding

    def compressible(self, content_type: str) -> bool:
        """True when ``content_type`` is on the allowlist."""
        media = content_type.partition(";")[0].strip().lower()
        if media == "text/event-stream":
            return self.config.compress_event_streams
        return media in self._types or media.startswith(self._type_prefixes)

    def _compressible_raw(self, content_type: bytes) -> bool:
        known = self._compressible.get(content_type)
        if known is None:
            known = self.compressible(content_type.decode("latin-1"))
            if len(content_type) <= _MEMO_VALUE_MAX:
                if len(self._compressible) >= _MEMO_SIZE:
                    self._compressible.clear()
                self._compressible[content_type] = known
        return known


class _Labels:
    """The header value and the metric series of one coding."""

    __slots__ = ("bytes_in", "bytes_out", "name", "raw", "response")

    def __init__(self, encoding: str) -> None:
        self.name = encoding
        self.raw = encoding.encode("latin-1")
        self.response = _responses.series({"encoding": encoding})
        self.bytes_in = _bytes.series({"encoding": encoding, "direction": "in"})
        self.bytes_out = _bytes.series({"encoding": encoding, "direction": "out"})


class _Responder:
    """Per-request state: the held start message and the encoder."""

    __slots__ = ("cached", "encoder", "encoding", "mw", "passthrough", "send_", "start")

    def __init__(self, mw: CompressionMiddleware, send: Send, encoding: str, cached: bool) -> None:
        self.mw = mw
        self.send_ = send
        self.encoding = encoding
        self.cached = cached
        self.start: Message | None = None
        self.encoder: Encoder | None = None
        self.passthrough = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.start = message
            return
        if self.encoder is not None:
            await self._stream(message)
            return
        if self.passthrough or self.start is None:
            await self.send_(message)
            return
        start, self.start = self.start, None
        if kind != "http.response.body":  # pathsend / zerocopy: cannot compress
            await self._pass(start, message, vary=False)
            return
        mw = self.mw
        # One pass over the headers instead of one scan per header looked up
        # (the first occurrence of each name counts, as in Starlette's Headers).
        found: dict[bytes, bytes] = {}
        for name, value in start["headers"]:
            if name in _WATCHED and name not in found:
                found[name] = value
        if not mw._compressible_raw(found.get(b"content-type", b"")):
            await self._pass(start, message, vary=False)
            return
        status = start["status"]
        encoded = b"content-encoding" in found
        if status in _UNCOMPRESSIBLE_STATUS or status < 200 or encoded or b"content-range" in found:
            # Already encoded (never twice), partial, or bodiless.
            await self._pass(start, message, vary=not encoded)
            return
        if self.encoding == IDENTITY or b"no-transform" in found.get(b"cache-control", b""):
            await self._pass(start, message, vary=True)
            return
        body: bytes = message.get("body", b"")
        labels = mw._labels[self.encoding]
        if not message.get("more_body", False):
            # The whole body in one message (the common case): one-shot compression.
            if len(body) < mw.minimum_size:
                await self._pass(start, message, vary=True)
                return
            data = compress(self.encoding, body, self._level())
            labels.response.value += 1
            labels.bytes_in.value += len(body)
            labels.bytes_out.value += len(data)
            length = str(len(data)).encode("latin-1")
            start["headers"] = _encoded_headers(start["headers"], labels.raw, length)
            await self.send_(start)
            await self.send_({"type": "http.response.body", "body": data})
            return
        declared = found.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) < mw.minimum_size:
            await self._pass(start, message, vary=True)
            return
        self.encoder = new_encoder(self.encoding, self._level())
        labels.response.value += 1
        start["headers"] = _encoded_headers(start["headers"], labels.raw, None)
        await self.send_(start)
        await self._stream(message)

    def _level(self) -> int:
        levels = self.mw.cached_levels if self.cached else self.mw.levels
        return levels[self.encoding]

    async def _pass(self, start: Message, message: Message, *, vary: bool) -> None:
        self.passthrough = True
        if vary:
            _IDENTITY.value += 1
            start["headers"] = _with_vary(start["headers"])
        await self.send_(start)
        await self.send_(message)

    async def _stream(self, message: Message) -> None:
        assert self.encoder is not None
        if message["type"] != "http.response.body":
            await self.send_(message)
            return
        more = message.get("more_body", False)
        body = message.get("body", b"")
        data = self.encoder.compress(body)
        if not more:
            data += self.encoder.finish()
        labels = self.mw._labels[self.encoding]
        labels.bytes_in.value += len(body)
        labels.bytes_out.value += len(data)
        if data or not more:
            await self.send_({"type": "http.response.body", "body": data, "more_body": more})


def _vary_value(vary: bytes) -> bytes | None:
    """``vary`` with Accept-Encoding added, or None when it already covers it."""
    if vary.strip() == b"*" or b"accept-encoding" in vary.lower():
        return None
    return vary + b", Accept-Encoding"


def _with_vary(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A copy of ``raw`` whose first Vary header names Accept-Encoding."""
    headers = list(raw)  # never mutate the app's list: it may be shared
    for i, (name, value) in enumerate(headers):
        if name == b"vary":
            combined = _vary_value(value)
            if combined is not None:
                headers[i] = (name, combined)
            return headers
    headers.append((b"vary", b"Accept-Encoding"))
    return headers


def _encoded_headers(
    raw: list[tuple[bytes, bytes]], encoding: bytes, length: bytes | None
) -> list[tuple[bytes, bytes]]:
    """The start headers of an encoded body, built in one pass.

    Adds Content-Encoding and Vary: Accept-Encoding, sets Content-Length to
    ``length`` (drops it when None: streamed), weakens ETags (the bytes
    changed, so a strong validator would now lie) and drops Accept-Ranges
    (byte ranges of the encoded body are not what the client would ask for).
    """
    headers: list[tuple[bytes, bytes]] = []
    has_vary = has_length = False
    for name, value in raw:
        if name == b"content-length":
            if length is not None and not has_length:
                headers.append((name, length))
                has_length = True
            continue
        if name == b"vary":
            if not has_vary:
                has_vary = True
                value = _vary_value(value) or value
        elif name == b"etag":
            if not value.startswith(b"W/"):
                value = b"W/" + value
        elif name == b"accept-ranges":
            continue
        headers.append((name, value))
    headers.append((b"content-encoding", encoding))
    if not has_vary:
        headers.append((b"vary", b"Accept-Encoding"))
    if length is not None and not has_length:
        headers.append((b"content-length", length))
    return headers
