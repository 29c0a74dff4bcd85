"""pytest plugin: fail a test when freightscale's code blocks the event loop.

Enable it from the root ``tests/conftest.py``::

    pytest_plugins = ["tests.blocking"]

Every test then runs with `blockbuster <https://github.com/cbornet/blockbuster>`_
active and ``scanned_modules=["freightscale"]``. blockbuster patches the usual
blocking primitives (``time.sleep``, file reads and writes, blocking socket
calls, ``sqlite3``, a contended ``threading.Lock.acquire``, ``input``...); a
patched call made **on a thread that runs an event loop** walks the Python
stack and raises :class:`blockbuster.BlockingError` when any frame belongs to
freightscale's package. So:

* freightscale code that blocks the loop fails the test that drove it — also
  when a library it calls does the blocking (the library's frame sits above a
  freightscale frame), and also when it blocks in an app that a freightscale
  middleware wraps (the middleware's frame is on the stack);
* a test's own setup, sync fixtures and third-party code running without a
  freightscale frame on the stack are never flagged;
* code on helper threads (``asyncio.to_thread``, executors, the loop monitor's
  watchdog) is never flagged: no loop runs on those threads.

A ``BlockingError`` that freightscale code catches and swallows (a fail-open
``except Exception``) still fails the test: every error raised is recorded and
reported at teardown.

A test that must block on purpose (e.g. to exercise the loop-lag monitor)
opts out with ``@pytest.mark.allow_blocking``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from types import ModuleType

import blockbuster.blockbuster as _bb
import pytest

import freightscale

__all__ = [
    "ALLOWED",
    "SCANNED_MODULES",
    "RecordingBlockingError",
    "blocking_guard",
    "expect_blocking",
    "synthetic_freightscale_module",
]

SCANNED_MODULES = ["freightscale"]
"""Packages whose frames make a blocking call on the loop an error."""

# Blocking calls that are accepted, with the reason; (file suffix, function names).
ALLOWED = [
    # asyncpg resolves its connect parameters like libpq, once per new connection
    # (bounded by the pool size): it stats and reads ~/.pgpass when the URL has no
    # password and looks for ~/.postgresql/postgresql.{crt,key} for sslmode=prefer.
    # Tiny local files; moving them off the loop would mean re-implementing
    # asyncpg's parameter resolution. Nothing else in asyncpg is allowed.
    ("asyncpg/connect_utils.py", {"_parse_connect_dsn_and_args"}),
    # FastAPI looks up each endpoint's source file (inspect.getsourcefile/lines) on
    # its first request, for error messages, and caches the result per endpoint.
    ("fastapi/routing.py", {"_extract_endpoint_context"}),
    # SQLAlchemy's pysqlite dialect makes a SQLite file path absolute (os.getcwd) when
    # an engine is created: once per engine, at build time, no disk access.
    ("sqlalchemy/dialects/sqlite/pysqlite.py", {"create_connect_args"}),
    # The standard library loads its MIME-type table (/etc/mime.types...) lazily, once
    # per process, on the first mimetypes.guess_type() — e.g. Starlette's FileResponse.
    ("mimetypes.py", {"init"}),
    # Anything a module does while it is first imported (package data such as Lua
    # scripts read by limits and by freightscale.sessions.redis) happens once per
    # process: an import is start-up work even when it is triggered lazily.
    ("<frozen importlib._bootstrap>", {"_call_with_frames_removed"}),
]
"""Third-party functions allowed to block even under a freightscale frame."""

# pytest's logging plugin always attaches a FileHandler on os.devnull (its
# ``--log-file`` default), so any log line freightscale emits on the loop would
# count as a file write. Writes to the null device never block.
_WRITES = ("io.TextIOWrapper.write", "io.BufferedWriter.write")

_MARKER = "allow_blocking"
_raised: list[str] = []
_failed = pytest.StashKey[bool]()


class RecordingBlockingError(_bb.BlockingError):
    """The error blockbuster raises while the guard is on; remembers each one."""

    def __init__(self, func: str) -> None:
        super().__init__(func)
        _raised.append(func)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}: the test blocks the event loop on purpose; the blockbuster guard is off",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_failed] = True
    return report


def _or_devnull(predicate: Callable[..., bool]) -> Callable[..., bool]:
    def allowed(file: object, *args: object, **kwargs: object) -> bool:
        return getattr(file, "name", None) == os.devnull or predicate(file, *args, **kwargs)

    return allowed


@pytest.fixture(autouse=True)
def blocking_guard(request: pytest.FixtureRequest) -> Iterator[_bb.BlockBuster | None]:
    """Activate blockbuster for freightscale's code during the test (autouse).

    Yields the active :class:`blockbuster.BlockBuster`, or ``None`` for a test
    marked ``allow_blocking``.
    """
    if request.node.get_closest_marker(_MARKER) is not None:
        yield None
        return
    guard = _bb.BlockBuster(SCANNED_MODULES)
    for function in guard.functions.values():
        for filename, names in ALLOWED:
            function.can_block_in(filename, names)
    for name in _WRITES:
        function = guard.functions[name]
        function.can_block_predicate = _or_devnull(function.can_block_predicate)
    original = _bb.BlockingError
    _bb.BlockingError = RecordingBlockingError  # type: ignore[misc]
    _raised.clear()
    guard.activate()
    try:
        yield guard
    finally:
        guard.deactivate()
        _bb.BlockingError = original  # type: ignore[misc]
    calls, _raised[:] = list(_raised), []
    # Report only errors the test did not already fail with (setup or call).
    if calls and not request.node.stash.get(_failed, False):
        pytest.fail(
            "freightscale blocked the event loop (the error was caught and swallowed "
            f"by the code under test): {', '.join(sorted(set(calls)))}. Move the call "
            "off the loop (asyncio.to_thread) or mark the test allow_blocking if it "
            "blocks on purpose.",
            pytrace=False,
        )


@contextmanager
def expect_blocking(func: str) -> Iterator[None]:
    """Assert the block raises the guard's error for ``func`` (e.g. ``"time.sleep"``).

    The expected error is then not reported again at teardown.
    """
    with pytest.raises(_bb.BlockingError, match=re.escape(f"Blocking call to {func}")):
        yield
    _raised.remove(func)


def synthetic_freightscale_module(name: str, source: str) -> ModuleType:
    """Build a module from ``source`` whose code counts as freightscale's for the guard.

    Its code objects carry a file name inside freightscale's package directory
    (blockbuster recognises scanned code by file name); no file is written and
    nothing is added to ``sys.modules``. Used to prove the guard catches
    blocking calls in freightscale code without shipping blocking code.
    """
    path = os.path.join(freightscale.__path__[0], f"{name}.py")
    module = ModuleType(f"freightscale.{name}")
    module.__file__ = path
    exec(compile(source, path, "exec"), module.__dict__)
    return module
