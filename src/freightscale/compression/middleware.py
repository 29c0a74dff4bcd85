"""``CompressionMiddleware``: negotiated brotli / gzip / zstd, streaming-safe.

Follows Starlette's gzip recipe (hold ``http.response.start`` until the first
body chunk, fix ``Content-Length``, add ``Vary``) and fixes what it gets
wrong: q-values are honoured (``br;q=0`` refuses brotli), streamed bodies are
flushed chunk by chunk instead of waiting in the compressor, ranges and 206
responses pass through, ETags are weakened, nothing is compressed twice.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders

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
_IDENTITY_LABELS = {"encoding": IDENTITY}


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

    def __repr__(self) -> str:
        return f"CompressionMiddleware(offered={self.offered!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accept: str | None = None
        ranged = False
        for name, value in scope["headers"]:
            if name == b"accept-encoding":
                accept = value.decode("latin-1")
            elif name == b"range":
                ranged = True
        encoding = negotiate(accept, self.offered) or IDENTITY
        if ranged or scope["method"] == "HEAD":
            encoding = IDENTITY
        state = scope.get(SCOPE_KEY)
        cached = bool(state and state.get(CACHE_FILL_KEY))
        responder = _Responder(self, send, encoding, cached)
        await self.app(scope, receive, responder.send)

    def compressible(self, content_type: str) -> bool:
        """True when ``content_type`` is on the allowlist."""
        media = content_type.partition(";")[0].strip().lower()
        if media == "text/event-stream":
            return self.config.compress_event_streams
        return media in self._types or media.startswith(self._type_prefixes)


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
        headers = MutableHeaders(scope=start)
        if not self.mw.compressible(headers.get("content-type", "")):
            await self._pass(start, message, vary=False)
            return
        if (
            start["status"] in _UNCOMPRESSIBLE_STATUS
            or start["status"] < 200
            or "content-encoding" in headers
            or "content-range" in headers
        ):
            # Already encoded (never twice), partial, or bodiless.
            await self._pass(start, message, vary="content-encoding" not in headers)
            return
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self.encoding == IDENTITY or "no-transform" in headers.get("cache-control", ""):
            await self._pass(start, message, vary=True)
            return
        if not more:
            if len(body) < self.mw.minimum_size:
                await self._pass(start, message, vary=True)
                return
            data = compress(self.encoding, body, self._level())
            self._count(len(body), len(data))
            _mark_encoded(headers, self.encoding)
            headers["content-length"] = str(len(data))
            await self.send_(start)
            await self.send_({"type": "http.response.body", "body": data})
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) < self.mw.minimum_size:
            await self._pass(start, message, vary=True)
            return
        self.encoder = new_encoder(self.encoding, self._level())
        _responses.add(1, {"encoding": self.encoding})
        _mark_encoded(headers, self.encoding)
        del headers["content-length"]
        await self.send_(start)
        await self._stream(message)

    def _count(self, size_in: int, size_out: int) -> None:
        encoding = self.encoding
        _responses.add(1, {"encoding": encoding})
        _bytes.add(size_in, {"encoding": encoding, "direction": "in"})
        _bytes.add(size_out, {"encoding": encoding, "direction": "out"})

    def _level(self) -> int:
        levels = self.mw.cached_levels if self.cached else self.mw.levels
        return levels[self.encoding]

    async def _pass(self, start: Message, message: Message, *, vary: bool) -> None:
        self.passthrough = True
        if vary:
            _responses.add(1, _IDENTITY_LABELS)
            _add_vary(MutableHeaders(scope=start))
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
        encoding = self.encoding
        _bytes.add(len(body), {"encoding": encoding, "direction": "in"})
        _bytes.add(len(data), {"encoding": encoding, "direction": "out"})
        if data or not more:
            await self.send_({"type": "http.response.body", "body": data, "more_body": more})


def _add_vary(headers: MutableHeaders) -> None:
    vary = headers.get("vary")
    if vary is None:
        headers["vary"] = "Accept-Encoding"
    elif vary.strip() != "*" and "accept-encoding" not in vary.lower():
        headers["vary"] = f"{vary}, Accept-Encoding"


def _mark_encoded(headers: MutableHeaders, encoding: str) -> None:
    headers["content-encoding"] = encoding
    _add_vary(headers)
    etag = headers.get("etag")
    if etag is not None and not etag.startswith("W/"):
        # The bytes changed, so a strong validator would now lie.
        headers["etag"] = "W/" + etag
    if "accept-ranges" in headers:
        # Byte ranges of the encoded body are not what the client would ask for.
        del headers["accept-ranges"]
