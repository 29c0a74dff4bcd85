"""Request decompression: accept gzip / deflate / br / zstd bodies, refuse bombs.

``RequestDecompressionMiddleware`` decodes a request body whose
``Content-Encoding`` it supports *as the application reads it*: nothing is
buffered, and each input chunk is expanded in bounded steps, so a 2 KB body
that would expand to gigabytes is cut off after ``max_size`` bytes with a
413 problem, having used no more than a few megabytes. An encoding it does not
support gets 415, a corrupt or truncated stream 400. The application sees the
decoded body with ``Content-Encoding`` and ``Content-Length`` removed from the
request headers.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any, Protocol

import brotli

from freightscale.errors import problem_response
from freightscale.exceptions import ConfigurationError, MissingDependencyError
from freightscale.settings.decompression import DecompressionSettings
from freightscale.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestDecompressionMiddleware"]

# Bound on the output of one decoding step: memory stays small however much
# a single input chunk would expand.
_STEP = 64 * 1024
# zstd's RLE blocks reach ~32,000:1, so feed it small slices of input.
_ZSTD_SLICE = 256


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _Decoder(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]: ...

    def finish(self) -> Iterator[bytes]: ...


class _ZlibDecoder:
    def __init__(self, wbits: int) -> None:
        self._obj = zlib.decompressobj(wbits)

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            try:
                out = self._obj.decompress(data, _STEP)
            except zlib.error as exc:
                raise _Refused(400, f"corrupt compressed request body: {exc}") from None
            if out:
                yield out
            data = self._obj.unconsumed_tail
            if self._obj.eof and data:
                raise _Refused(400, "trailing data after the compressed body")

    def finish(self) -> Iterator[bytes]:
        if not self._obj.eof:
            raise _Refused(400, "the compressed request body is truncated")
        return iter(())


class _BrotliDecoder:
    def __init__(self) -> None:
        self._obj = brotli.Decompressor()

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            out = self._obj.process(data, output_buffer_limit=_STEP)
            while True:
                if out:
                    yield out
                if self._obj.can_accept_more_data():
                    return
                out = self._obj.process(b"", output_buffer_limit=_STEP)
        except brotli.error as exc:
            raise _Refused(400, f"corrupt brotli request body: {exc}") from None

    def finish(self) -> Iterator[bytes]:
        if not self._obj.is_finished():
            raise _Refused(400, "the compressed request body is truncated")
        return iter(())


class _ZstdDecoder:
    def __init__(self, max_window: int) -> None:
        try:
            import zstandard
        except ImportError:  # pragma: no cover - depends on the install
            raise MissingDependencyError(
                "zstandard", extra="zstd", feature="zstd request decompression"
            ) from None
        self._error = zstandard.ZstdError
        self._obj = zstandard.ZstdDecompressor(max_window_size=max_window).decompressobj()
        self._done = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), _ZSTD_SLICE):
            try:
                out = self._obj.decompress(data[start : start + _ZSTD_SLICE])
            except self._error as exc:
                raise _Refused(400, f"corrupt zstd request body: {exc}") from None
            if out:
                yield out
        self._done = bool(self._obj.eof)

    def finish(self) -> Iterator[bytes]:
        if not self._done:
            raise _Refused(400, "the compressed request body is truncated")
        return iter(())


def _decoder(encoding: str, settings: DecompressionSettings) -> _Decoder:
    if encoding in ("gzip", "x-gzip"):
        return _ZlibDecoder(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _ZlibDecoder(zlib.MAX_WBITS)
    if encoding == "br":
        return _BrotliDecoder()
    if encoding == "zstd":
        return _ZstdDecoder(max_window=min(settings.max_size, 8 * 1024 * 1024) or 1 << 20)
    raise _Refused(415, f"Content-Encoding {encoding!r} is not supported")


class RequestDecompressionMiddleware:
    """Decode compressed request bodies, refusing decompression bombs.

    Args:
        app: the ASGI application.
        settings: limits and accepted encodings.
    """

    def __init__(self, app: ASGIApp, settings: DecompressionSettings | None = None) -> None:
        self.app = app
        self.settings = settings or DecompressionSettings()
        known = {"gzip", "x-gzip", "deflate", "br", "zstd", "identity"}
        unknown = set(self.settings.encodings) - known
        if unknown:
            raise ConfigurationError(
                f"FREIGHTSCALE_DECOMPRESSION__ENCODINGS: {sorted(unknown)} "
                f"not among {sorted(known)}"
            )
        self._accepted = frozenset(self.settings.encodings) | {"identity"}
        if "gzip" in self._accepted:
            self._accepted |= {"x-gzip"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encodings: list[str] = []
        for name, value in scope["headers"]:
            if name == b"content-encoding":
                encodings += [
                    e.strip().lower() for e in value.decode("latin-1").split(",") if e.strip()
                ]
        encodings = [e for e in encodings if e != "identity"]
        if not encodings:
            await self.app(scope, receive, send)
            return
        try:
            for encoding in encodings:
                if encoding not in self._accepted:
                    raise _Refused(415, f"Content-Encoding {encoding!r} is not supported")
            # Encodings are listed in the order they were applied: undo them last-first.
            decoders = [_decoder(e, self.settings) for e in reversed(encodings)]
        except _Refused as refused:
            await self._refuse(refused, scope, receive, send)
            return

        inner_scope = dict(scope)
        inner_scope["headers"] = [
            (k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")
        ]
        body = _DecodingReceive(receive, decoders, self.settings)
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if body.refused is not None and not started:
                # The app is answering an error it got from our receive (a
                # framework's 500): drop it, the 413/400 goes out instead.
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(inner_scope, body, send_wrapper)
        except Exception:
            if body.refused is None or started:
                raise
        if body.refused is not None and not started:
            await self._refuse(body.refused, scope, receive, send)

    @staticmethod
    async def _refuse(refused: _Refused, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {"Connection": "close"} if refused.status == 413 else {}
        if refused.status == 415:
            headers["Accept-Encoding"] = "gzip, deflate, br, zstd"
        response = problem_response(
            refused.status, detail=refused.detail, instance=scope.get("path"), headers=headers
        )
        await response(scope, receive, send)


class _DecodingReceive:
    """A ``receive`` that yields decoded body chunks and enforces the limits."""

    def __init__(
        self, receive: Receive, decoders: list[_Decoder], settings: DecompressionSettings
    ) -> None:
        self._receive = receive
        self._decoders = decoders
        self._settings = settings
        self._compressed = 0
        self._expanded = 0
        self.refused: _Refused | None = None

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request":
            return message
        data: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        self._compressed += len(data)
        try:
            out = b"".join(self._run(0, data, final=not more))
        except _Refused as refused:
            self.refused = refused
            raise
        result: dict[str, Any] = {"type": "http.request", "body": out, "more_body": more}
        return result

    def _run(self, index: int, data: bytes, *, final: bool) -> Iterator[bytes]:
        # Lazy all the way down: each bounded step is counted before the next
        # is produced, so a bomb is stopped before it can fill memory.
        decoder = self._decoders[index]
        last = index + 1 == len(self._decoders)

        def pieces() -> Iterator[bytes]:
            if data:
                yield from decoder.feed(data)
            if final:
                yield from decoder.finish()

        for piece in pieces():
            if last:
                self._count(piece)
                yield piece
            else:
                yield from self._run(index + 1, piece, final=False)
        if final and not last:
            yield from self._run(index + 1, b"", final=True)

    def _count(self, piece: bytes) -> None:
        self._expanded += len(piece)
        s = self._settings
        if self._expanded > s.max_size:
            raise _Refused(413, f"the request body expands beyond {s.max_size} bytes")
        if self._expanded > s.ratio_floor and self._expanded > s.max_ratio * max(
            self._compressed, 1
        ):
            raise _Refused(
                413,
                f"the request body's compression ratio exceeds {s.max_ratio:g}:1 "
                "(a decompression bomb?)",
            )
