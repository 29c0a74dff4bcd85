"""Behaviour specific to PostgresStore, against the real PostgreSQL.

The shared behaviour is in test_contract.py; here: the table and its
creation, expired rows, the batched sweep and its background task, the
timeouts and the outage path (a closed port, a server that never answers).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from freightscale.exceptions import (
    ConfigurationError,
    StoreError,
    StoreUnavailableError,
)
from freightscale.stores import Store, store_from_url
from freightscale.stores.postgres import PostgresStore
from tests.servers import free_port

SWEEPER_PREFIX = "freightscale-store-sweeper"


def _table_name() -> str:
    return f"fs_store_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[PostgresStore]:
    """A root store on a table of its own (dropped afterwards), no background sweep."""
    store = PostgresStore.from_url(database_url, table=_table_name(), sweep_interval=None)
    yield store
    try:
        async with store.engine.begin() as conn:
            await conn.execute(sa.text(f'DROP TABLE IF EXISTS "{store.table.name}"'))
    finally:
        await store.aclose()


async def _sql(store: PostgresStore, statement: str, **params: object) -> list[sa.Row[Any]]:
    """Run raw SQL on the store's table (``{t}`` is its name)."""
    async with store.engine.begin() as conn:
        result = await conn.execute(sa.text(statement.format(t=store.table.name)), params)
        return list(result) if result.returns_rows else []


async def _expire(store: PostgresStore, full_key: str) -> None:
    await _sql(
        store, "UPDATE {t} SET expires_at = now() - interval '1 second' WHERE key = :k", k=full_key
    )


def _sweeper_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(SWEEPER_PREFIX)]


# -- construction and configuration -------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["postgresql://u@127.0.0.1/db", "postgresql+asyncpg://u@127.0.0.1/db", "postgres://u@h/d"],
)
async def test_from_url_uses_asyncpg(url: str) -> None:
    store = PostgresStore.from_url(url)
    assert store.engine.url.drivername == "postgresql+asyncpg"
    await store.aclose()


async def test_store_from_url_picks_postgres(database_url: str) -> None:
    store = store_from_url(database_url.replace("postgresql+asyncpg", "postgresql"))
    assert isinstance(store, PostgresStore)
    await store.check()
    await store.aclose()


@pytest.mark.parametrize("url", ["mysql://u@h/d", "postgresql+psycopg://u@h/d", "not a url"])
def test_from_url_rejects_other_schemes(url: str) -> None:
    with pytest.raises(ConfigurationError, match="PostgresStore URL"):
        PostgresStore.from_url(url)


@pytest.mark.parametrize("table", ["bad-name", "1abc", "a" * 64, 'x"; DROP TABLE y; --', ""])
def test_table_name_must_be_an_identifier(table: str) -> None:
    with pytest.raises(ConfigurationError, match="table="):
        PostgresStore.from_url("postgresql://u@h/d", table=table)


@pytest.mark.parametrize(
    ("option", "value"),
    [("sweep_batch_size", 0), ("sweep_interval", -1.0), ("check_timeout", 0.0), ("pool_size", 0)],
)
def test_bounds_are_checked(option: str, value: float) -> None:
    options: dict[str, Any] = {option: value}
    with pytest.raises(ConfigurationError, match=option):
        PostgresStore.from_url("postgresql://u@h/d", **options)


def test_bad_namespace_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        PostgresStore.from_url("postgresql://u@h/d", namespace="a*")


async def test_repr_hides_the_password() -> None:
    store = PostgresStore.from_url("postgresql://user:s3cret@127.0.0.1/db")
    assert "s3cret" not in repr(store)
    assert "PostgresStore(" in repr(store)
    await store.aclose()


# -- schema -------------------------------------------------------------------------


async def test_table_created_lazily_with_expiry_index(pg: PostgresStore) -> None:
    exists = "SELECT to_regclass(:name) IS NOT NULL"
    assert (await _sql(pg, exists, name=pg.table.name))[0][0] is False
    await pg.set("k", b"v")
    assert (await _sql(pg, exists, name=pg.table.name))[0][0] is True
    columns = await _sql(
        pg,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = :name ORDER BY ordinal_position",
        name=pg.table.name,
    )
    assert [tuple(c) for c in columns] == [
        ("key", "text", "NO"),
        ("value", "bytea", "NO"),
        ("expires_at", "timestamp with time zone", "YES"),
    ]
    indexes = await _sql(
        pg, "SELECT indexdef FROM pg_indexes WHERE tablename = :name", name=pg.table.name
    )
    assert any("(expires_at)" in row[0] for row in indexes)


async def test_concurrent_creators_with_separate_pools(database_url: str) -> None:
    table = _table_name()
    stores = [
        PostgresStore.from_url(database_url, table=table, sweep_interval=None) for _ in range(4)
    ]
    try:
        await asyncio.gather(*(s.create_schema() for s in stores))
        await asyncio.gather(*(s.set(f"k{i}", b"v") for i, s in enumerate(stores)))
        assert await stores[0].get("k3") == b"v"
    finally:
        async with stores[0].engine.begin() as conn:
            await conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
        for s in stores:
            await s.aclose()


async def test_without_auto_create_a_missing_table_is_a_store_error(database_url: str) -> None:
    store = PostgresStore.from_url(
        database_url, table=_table_name(), auto_create=False, sweep_interval=None
    )
    try:
        with pytest.raises(StoreError) as caught:
            await store.get("k")
        assert not isinstance(caught.value, StoreUnavailableError)
        assert isinstance(caught.value.__cause__, sa.exc.SQLAlchemyError)
        await store.create_schema()
        await store.set("k", b"v")
        assert await store.get("k") == b"v"
    finally:
        async with store.engine.begin() as conn:
            await conn.execute(sa.text(f'DROP TABLE IF EXISTS "{store.table.name}"'))
        await store.aclose()


# -- expired rows and keys ---------------------------------------------------------------


async def test_expired_rows_are_invisible(pg: PostgresStore) -> None:
    view = pg.with_namespace("ns")
    await view.set("k", b"v", expires_in=60)
    await _expire(pg, "ns:k")
    assert await view.get("k") is None
    assert await view.exists("k") is False
    assert await view.expires_in("k") is None
    assert await view.delete("k") is False
    assert await _sql(pg, "SELECT key FROM {t}") == []


async def test_incr_restarts_an_expired_counter_with_a_new_window(pg: PostgresStore) -> None:
    assert await pg.incr("c", 5, expires_in=100) == 5
    await _expire(pg, "c")
    assert await pg.incr("c", 1, expires_in=30) == 1
    remaining = await pg.expires_in("c")
    assert remaining is not None
    assert 25 < remaining <= 30


async def test_incr_keeps_no_expiry_when_created_without(pg: PostgresStore) -> None:
    await pg.incr("c")
    await pg.incr("c", expires_in=10)
    assert await pg.expires_in("c") is None


async def test_incr_overflow_is_a_value_error(pg: PostgresStore) -> None:
    await pg.set("big", str(2**63 - 1).encode())
    with pytest.raises(ValueError, match="64-bit"):
        await pg.incr("big")
    with pytest.raises(ValueError, match="64-bit"):
        await pg.incr("other", 2**63)


async def test_set_with_non_positive_expiry_removes(pg: PostgresStore) -> None:
    await pg.set("k", b"v")
    await pg.set("k", b"w", expires_in=0)
    assert await pg.get("k") is None


async def test_non_bytes_value_rejected(pg: PostgresStore) -> None:
    with pytest.raises(TypeError, match="bytes"):
        await pg.set("k", "text")  # type: ignore[arg-type]


async def test_long_and_nul_keys_are_stored_hashed_under_the_namespace(pg: PostgresStore) -> None:
    view = pg.with_namespace("ns")
    await view.set("x" * 10_000, b"long")
    await view.set("a\x00b", b"nul")
    keys = [row[0] for row in await _sql(pg, "SELECT key FROM {t} ORDER BY key")]
    assert len(keys) == 2
    assert all(k.startswith("ns:#sha256:") and len(k) < 100 for k in keys)


# -- expiry sweep --------------------------------------------------------------------------


async def _fill(pg: PostgresStore, expired: int, live: int, forever: int) -> None:
    await pg.create_schema()
    await _sql(
        pg,
        "INSERT INTO {t} SELECT 'old:' || g, '\\x00'::bytea, now() - interval '1 minute' "
        "FROM generate_series(1, :n) g",
        n=expired,
    )
    await _sql(
        pg,
        "INSERT INTO {t} SELECT 'live:' || g, '\\x01'::bytea, now() + interval '1 hour' "
        "FROM generate_series(1, :n) g",
        n=live,
    )
    await _sql(
        pg,
        "INSERT INTO {t} SELECT 'forever:' || g, '\\x02'::bytea, NULL "
        "FROM generate_series(1, :n) g",
        n=forever,
    )


async def test_sweep_removes_thousands_of_expired_rows_in_batches(pg: PostgresStore) -> None:
    await _fill(pg, expired=5000, live=100, forever=50)
    assert await pg.sweep_expired(batch_size=700) == 5000
    counts = await _sql(
        pg, "SELECT split_part(key, ':', 1), count(*) FROM {t} GROUP BY 1 ORDER BY 1"
    )
    assert [tuple(c) for c in counts] == [("forever", 50), ("live", 100)]
    assert await pg.sweep_expired() == 0


async def test_concurrent_sweepers_share_the_work(pg: PostgresStore, database_url: str) -> None:
    await _fill(pg, expired=3000, live=20, forever=0)
    other = PostgresStore.from_url(database_url, table=pg.table.name, sweep_interval=None)
    try:
        counts = await asyncio.gather(
            pg.sweep_expired(batch_size=200), other.sweep_expired(batch_size=200)
        )
    finally:
        await other.aclose()
    assert sum(counts) == 3000
    assert (await _sql(pg, "SELECT count(*) FROM {t}"))[0][0] == 20


async def test_sweep_skips_rows_locked_by_others_instead_of_waiting(pg: PostgresStore) -> None:
    await _fill(pg, expired=300, live=0, forever=0)
    async with pg.engine.connect() as locker:
        await locker.execute(
            sa.text(f"SELECT key FROM {pg.table.name} WHERE key = 'old:7' FOR UPDATE")
        )
        async with asyncio.timeout(5):
            assert await pg.sweep_expired(batch_size=100) == 299
        await locker.rollback()
    assert await pg.sweep_expired() == 1


async def test_background_sweeper_starts_lazily_sweeps_and_stops(database_url: str) -> None:
    store = PostgresStore.from_url(database_url, table=_table_name(), sweep_interval=0.05)
    try:
        assert _sweeper_tasks() == []  # constructing the store starts nothing
        await store.set("trigger", b"v")
        (task,) = _sweeper_tasks()
        store.start_sweeper()  # idempotent
        assert _sweeper_tasks() == [task]
        await _fill(store, expired=1500, live=10, forever=0)
        for _ in range(100):
            if (await _sql(store, "SELECT count(*) FROM {t} WHERE key LIKE 'old:%'"))[0][0] == 0:
                break
            await asyncio.sleep(0.05)
        assert (await _sql(store, "SELECT count(*) FROM {t}"))[0][0] == 11
    finally:
        async with store.engine.begin() as conn:
            await conn.execute(sa.text(f'DROP TABLE IF EXISTS "{store.table.name}"'))
        await store.aclose()
    assert task.done()
    assert _sweeper_tasks() == []
    with pytest.raises(StoreError, match="closed"):
        await store.get("trigger")
    await store.aclose()  # idempotent
    assert _sweeper_tasks() == []


async def test_sweeper_logs_an_outage_once(caplog: pytest.LogCaptureFixture) -> None:
    store = PostgresStore.from_url(
        f"postgresql://postgres@127.0.0.1:{free_port()}/x", sweep_interval=0.02
    )
    store.start_sweeper()
    with caplog.at_level(logging.WARNING, logger="freightscale.stores.postgres"):
        await asyncio.sleep(0.3)
    await store.aclose()
    failures = [r for r in caplog.records if "sweep failed" in r.getMessage()]
    assert len(failures) == 1
    assert _sweeper_tasks() == []


# -- a shared engine ----------------------------------------------------------------------------


async def test_shared_engine_is_not_disposed_and_views_share_it(database_url: str) -> None:
    engine = create_async_engine(database_url, pool_size=2, max_overflow=0)
    store = PostgresStore(engine, table=_table_name(), sweep_interval=None)
    try:
        view = store.with_namespace("a")
        assert isinstance(store, Store)
        assert isinstance(view, PostgresStore)
        assert view.engine is engine
        await view.set("k", b"v")
        assert await store.get("a:k") == b"v"
        await view.aclose()  # a view's aclose leaves the root working
        assert await view.get("k") == b"v"
        await store.aclose()
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP TABLE IF EXISTS "{store.table.name}"'))
        await engine.dispose()


def test_engine_must_be_postgresql() -> None:
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    with pytest.raises(ConfigurationError, match="dialect 'sqlite'"):
        PostgresStore(engine)


# -- timeouts and outages --------------------------------------------------------------------------


@pytest.mark.parametrize("shared_engine", [False, True], ids=["own-engine", "shared-engine"])
async def test_statement_timeout_turns_a_lock_wait_into_unavailable(
    pg: PostgresStore, database_url: str, shared_engine: bool
) -> None:
    await pg.set("k", b"v")
    if shared_engine:
        engine = create_async_engine(database_url)
        store = PostgresStore(
            engine, table=pg.table.name, statement_timeout=0.2, dispose_engine=True
        )
    else:
        store = PostgresStore.from_url(database_url, table=pg.table.name, statement_timeout=0.2)
    try:
        async with pg.engine.connect() as locker:
            await locker.execute(
                sa.text(f"SELECT 1 FROM {pg.table.name} WHERE key = 'k' FOR UPDATE")
            )
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError) as caught:
                await store.set("k", b"w")
            assert time.monotonic() - started < 3
            assert isinstance(caught.value.__cause__, sa.exc.DBAPIError)
            assert "statement timeout" in str(caught.value)
            assert "w'" not in str(caught.value)  # parameters stay out of messages
            assert "INSERT" not in str(caught.value)
            await locker.rollback()
        await store.set("k", b"w")
        assert await pg.get("k") == b"w"
    finally:
        await store.aclose()


async def test_pool_timeout_is_unavailable(database_url: str) -> None:
    store = PostgresStore.from_url(
        database_url, pool_size=1, max_overflow=0, pool_timeout=0.2, sweep_interval=None
    )
    try:
        await store.check()
        async with store.engine.connect():  # the pool's only connection
            with pytest.raises(StoreUnavailableError) as caught:
                await store.check()
            assert isinstance(caught.value.__cause__, sa.exc.TimeoutError)
        await store.check()
    finally:
        await store.aclose()


async def test_a_cancelled_operation_leaves_the_pool_usable(
    pg: PostgresStore, database_url: str
) -> None:
    await pg.set("k", b"v")
    store = PostgresStore.from_url(
        database_url, table=pg.table.name, pool_size=1, max_overflow=0, sweep_interval=None
    )
    try:
        async with pg.engine.connect() as locker:
            await locker.execute(
                sa.text(f"SELECT 1 FROM {pg.table.name} WHERE key = 'k' FOR UPDATE")
            )
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):  # the caller gives up mid-statement
                    await store.set("k", b"w")
            await locker.rollback()
        async with asyncio.timeout(5):
            await store.set("k", b"x")
            assert await store.get("k") == b"x"
    finally:
        await store.aclose()


async def test_sweep_batch_size_is_checked(pg: PostgresStore) -> None:
    with pytest.raises(ConfigurationError, match="batch_size"):
        await pg.sweep_expired(batch_size=0)


async def test_closed_port_is_unavailable_not_a_driver_error() -> None:
    store = PostgresStore.from_url(
        f"postgresql://postgres@127.0.0.1:{free_port()}/x", check_timeout=1.0
    )
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as checked:
            await store.check()
        assert time.monotonic() - started < 1.5
        assert checked.value.__cause__ is not None
        for operation in (
            store.get("k"),
            store.set("k", b"v"),
            store.incr("c"),
            store.delete_all(),
        ):
            with pytest.raises(StoreUnavailableError) as caught:
                await operation
            assert caught.value.__cause__ is not None
            assert not isinstance(caught.value, sa.exc.SQLAlchemyError | OSError)
    finally:
        await store.aclose()


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port whose listener completes TCP handshakes but never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


async def test_silent_server_fails_within_the_timeouts(black_hole: int) -> None:
    store = PostgresStore.from_url(
        f"postgresql://postgres@127.0.0.1:{black_hole}/x", check_timeout=0.3, connect_timeout=0.5
    )
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="in time"):
            await store.check()
        assert time.monotonic() - started < 1.0
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await store.get("k")
        assert time.monotonic() - started < 2.0
    finally:
        await store.aclose()


# -- a server restart (our own PostgreSQL, never the shared one) ---------------------------------

PG_BIN = "/usr/lib/postgresql/15/bin"


class _OwnPostgres:
    """A throwaway PostgreSQL cluster on a free loopback port, run as ``postgres``."""

    def __init__(self, root: str) -> None:
        self.data = os.path.join(root, "data")
        self.log = os.path.join(root, "server.log")
        self.root = root
        self.port = free_port()

    def _as_postgres(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)

    def ctl(self, action: str) -> list[str]:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        return self._as_postgres(
            f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-m", "fast",
            action,
        )  # fmt: skip

    def init(self) -> list[str]:
        return self._as_postgres(
            f"{PG_BIN}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync"
        )


@pytest.fixture
def own_postgres() -> Iterator[_OwnPostgres]:
    # Not under pytest's tmp_path: its parents are private to root.
    root = tempfile.mkdtemp(prefix="fstest-pg-")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = _OwnPostgres(root)
    try:
        subprocess.run(server.init(), check=True, capture_output=True, timeout=60)
        subprocess.run(server.ctl("start"), check=True, capture_output=True, timeout=60)
        yield server
    finally:
        subprocess.run(server.ctl("stop"), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


async def _run(command: list[str]) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    assert await asyncio.wait_for(process.wait(), 60) == 0


@pytest.mark.slow
async def test_recovers_by_itself_after_a_server_restart(own_postgres: _OwnPostgres) -> None:
    store = PostgresStore.from_url(
        f"postgresql://postgres@127.0.0.1:{own_postgres.port}/postgres",
        sweep_interval=0.05,
        connect_timeout=2,
    )
    try:
        await asyncio.gather(*(store.set(f"k{i}", b"v") for i in range(5)))  # fill the pool
        await _run(own_postgres.ctl("stop"))
        with pytest.raises(StoreUnavailableError):
            await store.get("k0")
        with pytest.raises(StoreUnavailableError):
            await store.check()
        await asyncio.sleep(0.2)  # the sweeper meets the outage too, and survives it
        await _run(own_postgres.ctl("start"))
        outcomes = []
        for _ in range(3):  # at most one stale pooled connection may fail first
            try:
                outcomes.append(await store.get("k0"))
            except StoreUnavailableError:
                outcomes.append(None)
        assert outcomes[-2:] == [b"v", b"v"]
        await store.check()
        (sweeper,) = _sweeper_tasks()
        assert not sweeper.done()
    finally:
        await store.aclose()
