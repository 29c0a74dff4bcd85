"""``freightscale sessions import``: move a legacy express-session file store into a real store.

The legacy store is one JSON object mapping session id to session object
(optionally wrapped as ``{"sessions": {...}}``); each session has an
express-session ``cookie`` block whose ``expires`` gives its end. Every live
session is written as ``legacy:<id>`` with its remaining lifetime; the
``cookie`` block itself is dropped (freightscale sets its own cookie).

* The file is **streamed** with ijson (one session in memory at a time, plus
  one write batch), so a multi-GB file needs no more memory than a small one.
* Writes are create-if-absent, so a re-run changes nothing, and a session
  that was migrated or logged out (a tombstone) is never resurrected.
* Expired sessions are skipped; broken entries are reported with their id and
  reason while all good ones are imported. Exit status: 0 all imported,
  1 some entries rejected, 2 the import could not run or stopped early.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

from freightscale.exceptions import FreightScaleError, MissingDependencyError, StoreError
from freightscale.sessions.backends import SessionBackend
from freightscale.sessions.middleware import LEGACY_PREFIX
from freightscale.sessions.session import dumps

__all__ = ["ImportReport", "configure", "import_file", "iter_sessions", "parse_entry", "run"]

_ID_RE = re.compile(r"\A[A-Za-z0-9_-]{1,128}\Z")


class LegacyFileError(FreightScaleError):
    """The legacy file cannot be read as a JSON object of sessions."""


@dataclass
class ImportReport:
    """What an import did (or, with ``dry_run``, would do)."""

    read: int = 0
    imported: int = 0
    unchanged: int = 0
    expired: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    fatal: str | None = None

    @property
    def exit_status(self) -> int:
        """0: everything good was imported; 1: some entries rejected; 2: fatal."""
        if self.fatal is not None:
            return 2
        return 1 if self.rejected else 0


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments."""
    parser.description = (
        "Import a legacy express-session file store (session-store.json) into Redis or "
        "PostgreSQL: streamed, idempotent, expired sessions skipped, broken entries reported."
    )
    parser.add_argument("path", type=Path, help="the legacy session-store.json")
    parser.add_argument(
        "--to",
        dest="url",
        metavar="URL",
        help="target store: redis://…, redis+cluster://…, postgresql+asyncpg://… (required "
        "unless --dry-run)",
    )
    parser.add_argument("--dry-run", action="store_true", help="read and validate, write nothing")
    parser.add_argument(
        "--key-prefix", default="fs", help="Redis key prefix (FREIGHTSCALE_REDIS__KEY_PREFIX)"
    )
    parser.add_argument(
        "--table", default="freightscale_sessions", help="PostgreSQL table of the sessions"
    )
    parser.add_argument("--batch-size", type=int, default=500, help="sessions per write batch")
    parser.add_argument(
        "--max-size-bytes",
        type=int,
        default=16_384,
        help="reject sessions larger than this (FREIGHTSCALE_SESSIONS__MAX_SIZE_BYTES)",
    )
    parser.add_argument(
        "--now", default=None, help="ISO 8601 time to judge expiry against (default: now)"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def _parse_expires(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError(f"cookie.expires is {type(value).__name__}, not an ISO 8601 date string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"cookie.expires {value[:40]!r} is not an ISO 8601 date") from None
    if parsed.tzinfo is None:
        raise ValueError(f"cookie.expires {value[:40]!r} has no time zone")
    return parsed.timestamp()


def parse_entry(sid: str, value: Any, max_size: int) -> tuple[dict[str, Any], float]:
    """Validate one legacy entry; return ``(data, expires_at)``.

    Raises:
        ValueError: with the reason the entry is rejected.
    """
    if not sid:
        raise ValueError("empty session id")
    if not _ID_RE.match(sid):
        raise ValueError("session id has characters a signed connect.sid cannot carry")
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        raise ValueError(f"entry is {kind}, not a session object")
    cookie = value.get("cookie")
    if not isinstance(cookie, dict):
        raise ValueError("no cookie block (cannot tell when the session expires)")
    expires_at = _parse_expires(cookie.get("expires"))
    data = {k: v for k, v in value.items() if k != "cookie"}
    size = len(dumps(data).encode())
    if size > max_size:
        raise ValueError(f"session is {size} bytes of JSON, more than --max-size-bytes={max_size}")
    return data, expires_at


class _Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...


class _CountingReader:
    """A binary file wrapper that remembers how far it read (for the progress bar)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.position = 0

    def read(self, size: int = -1, /) -> bytes:
        chunk = self.raw.read(size)
        self.position += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = 0, /) -> int:
        self.position = self.raw.seek(offset, whence)
        return self.position


def _is_wrapped(handle: _Source) -> bool:
    import ijson  # type: ignore[import-untyped]

    events = ijson.parse(handle)
    try:
        _, event, _ = next(events)
        if event != "start_map":
            raise LegacyFileError("the legacy store is not a JSON object of sessions")
        _, event, value = next(events)
        if event != "map_key" or value != "sessions":
            return False
        _, event, _ = next(events)
        return bool(event == "start_map")
    except StopIteration:
        raise LegacyFileError("the legacy store file is empty") from None
    except ijson.JSONError as exc:
        raise LegacyFileError(f"the legacy store is not valid JSON: {exc}") from None


def iter_sessions(handle: _Source) -> Iterator[tuple[str, Any]]:
    """Yield ``(id, value)`` of each legacy session, streaming ``handle`` (seekable, binary).

    Raises:
        LegacyFileError: the file is not a JSON object, or breaks off.
    """
    try:
        import ijson
    except ImportError as exc:  # pragma: no cover
        raise MissingDependencyError("ijson", extra="cli", feature="the session import") from exc
    wrapped = _is_wrapped(handle)
    handle.seek(0)
    try:
        yield from ijson.kvitems(handle, "sessions" if wrapped else "", use_float=True)
    except ijson.JSONError as exc:
        raise LegacyFileError(f"the legacy store breaks off or is not valid JSON: {exc}") from None


async def import_file(
    path: Path,
    backend: SessionBackend | None,
    *,
    now: float | None = None,
    batch_size: int = 500,
    max_size: int = 16_384,
    progress: Any = None,
) -> ImportReport:
    """Import ``path`` into ``backend`` (None: dry run). Never raises for bad entries.

    Args:
        progress: called with the number of bytes read so far, after each entry.
    """
    report = ImportReport()
    now = time.time() if now is None else now
    batch: list[tuple[str, dict[str, Any], float]] = []

    async def flush() -> None:
        if batch and backend is not None:
            created = await backend.import_many(batch)
            report.imported += sum(created)
            report.unchanged += len(created) - sum(created)
        elif batch:
            report.imported += len(batch)
        batch.clear()

    try:
        with path.open("rb") as raw:
            reader = _CountingReader(raw)
            for sid, value in iter_sessions(reader):
                report.read += 1
                try:
                    data, expires_at = parse_entry(sid, value, max_size)
                except ValueError as exc:
                    report.rejected.append((sid, str(exc)))
                    continue
                if expires_at <= now:
                    report.expired += 1
                    continue
                batch.append((LEGACY_PREFIX + sid, data, expires_at))
                if len(batch) >= batch_size:
                    await flush()
                if progress is not None:
                    progress(reader.position)
            await flush()
    except OSError as exc:
        report.fatal = f"cannot read {path}: {exc.strerror or exc}"
    except LegacyFileError as exc:
        await _flush_quietly(flush)
        report.fatal = f"{exc} (after {report.read} entries; a re-run is safe)"
    except StoreError as exc:
        report.fatal = f"{exc} (after {report.read} entries; a re-run is safe)"
    return report


async def _flush_quietly(flush: Any) -> None:
    with contextlib.suppress(StoreError):
        await flush()


def run(args: argparse.Namespace) -> int:
    """Run the import; print every rejected entry and a summary. Returns the exit status."""
    if not args.dry_run and not args.url:
        print("error: --to URL is required (or use --dry-run)", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    now = None
    if args.now:
        try:
            now = _parse_expires(args.now)
        except ValueError as exc:
            print(f"error: --now: {exc}", file=sys.stderr)
            return 2
    report = asyncio.run(_run(args, now))
    for sid, reason in report.rejected:
        print(f"rejected {sid!r}: {reason}", file=sys.stderr)
    verb = "would import" if args.dry_run else "imported"
    print(
        f"read {report.read}: {verb} {report.imported}, already present {report.unchanged}, "
        f"expired {report.expired}, rejected {len(report.rejected)}"
    )
    if report.fatal:
        print(f"error: {report.fatal}", file=sys.stderr)
    return report.exit_status


async def _run(args: argparse.Namespace, now: float | None) -> ImportReport:
    from freightscale.sessions.config import backend_from_url
    from freightscale.settings.redis import RedisSettings
    from freightscale.settings.sessions import SessionSettings

    backend = None
    if not args.dry_run:
        try:
            backend = backend_from_url(
                args.url,
                SessionSettings(table_name=args.table, timeout=10.0),
                redis_settings=RedisSettings(key_prefix=args.key_prefix, socket_timeout=10.0),
            )
        except (FreightScaleError, ValueError) as exc:
            return ImportReport(fatal=str(exc))
    try:
        with _progress(args) as advance:
            return await import_file(
                args.path,
                backend,
                now=now,
                batch_size=args.batch_size,
                max_size=args.max_size_bytes,
                progress=advance,
            )
    finally:
        if backend is not None:
            await backend.aclose()


class _progress:  # a context manager used like a function
    """A rich progress bar over the file's bytes, or nothing when disabled / not a terminal."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bar: Any = None

    def __enter__(self) -> Any:
        if self.args.no_progress:
            return None
        try:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
        except ImportError:
            return None
        console = Console(stderr=True)
        if not console.is_terminal:
            return None
        try:
            total = self.args.path.stat().st_size
        except OSError:
            return None
        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.bar.start()
        task = self.bar.add_task("importing sessions", total=total)
        return lambda position: self.bar.update(task, completed=position)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
