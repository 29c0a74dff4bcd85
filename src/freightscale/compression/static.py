"""``PrecompressedStaticFiles``: Starlette's ``StaticFiles`` serving ``.br`` / ``.gz`` siblings.

Build steps often write ``app.3f2a9c1d.js`` next to ``app.3f2a9c1d.js.br``
and ``app.3f2a9c1d.js.gz``. Compressing such files per request wastes CPU;
this class sends the best precompressed sibling the client accepts (with
the original's media type) and marks fingerprinted names ``immutable``.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.responses import FileResponse, Response
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Scope

from freightscale.compression.negotiation import negotiate

__all__ = ["PrecompressedStaticFiles"]

_SUFFIXES = {"br": ".br", "gzip": ".gz", "zstd": ".zst"}
# name.<8+ hex>.ext or name-<8+ hex>.ext (webpack, vite, esbuild styles)
_FINGERPRINT = re.compile(r"[.-][0-9a-fA-F]{8,}\.[A-Za-z0-9]+$")


class PrecompressedStaticFiles(StaticFiles):
    """``StaticFiles`` that prefers precompressed siblings.

    Args:
        encodings: codings looked for, in preference order (``br``, ``gzip``, ``zstd``).
        immutable_max_age: ``max-age`` for fingerprinted names, sent with ``immutable``.
        default_cache_control: ``Cache-Control`` for other files (empty: none).
        **kwargs: passed to ``StaticFiles`` (``directory``, ``packages``, ``html``…).
    """

    def __init__(
        self,
        *,
        encodings: tuple[str, ...] = ("br", "gzip"),
        immutable_max_age: int = 31_536_000,
        default_cache_control: str = "no-cache",
        **kwargs: Any,
    ) -> None:
        unknown = [e for e in encodings if e not in _SUFFIXES]
        if unknown:
            raise ValueError(f"encodings {unknown!r} are not among {sorted(_SUFFIXES)}")
        super().__init__(**kwargs)
        self.encodings = encodings
        self.immutable = f"public, max-age={immutable_max_age}, immutable"
        self.default_cache_control = default_cache_control

    async def get_response(self, path: str, scope: Scope) -> Response:
        """Serve ``path``, or its best precompressed sibling."""
        response = await super().get_response(path, scope)
        if not isinstance(response, FileResponse) or response.status_code != 200:
            return self._cache_headers(response, path)
        request_headers = Headers(scope=scope)
        if self.encodings:
            response.headers["vary"] = "Accept-Encoding"
        if "range" in request_headers or not self.encodings:
            return self._cache_headers(response, path)
        encoding = negotiate(request_headers.get("accept-encoding"), self.encodings)
        if encoding not in _SUFFIXES:
            return self._cache_headers(response, path)
        sibling, st = await anyio.to_thread.run_sync(self.lookup_path, path + _SUFFIXES[encoding])
        if st is None or not stat.S_ISREG(st.st_mode):
            return self._cache_headers(response, path)
        encoded = FileResponse(
            sibling,
            stat_result=st,
            media_type=response.media_type,
            headers={"content-encoding": encoding, "vary": "Accept-Encoding"},
        )
        if self.is_not_modified(encoded.headers, request_headers):
            return self._cache_headers(NotModifiedResponse(encoded.headers), path)
        return self._cache_headers(encoded, path)

    def _cache_headers(self, response: Response, path: str) -> Response:
        if response.status_code in (200, 304):
            if _FINGERPRINT.search(os.path.basename(path)):
                response.headers["cache-control"] = self.immutable
            elif self.default_cache_control:
                response.headers.setdefault("cache-control", self.default_cache_control)
        return response
