"""Settings validation, engine options and statement routing rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import Column, Integer, MetaData, Table, delete, insert, select, text, update
from sqlalchemy.pool import StaticPool

from freightscale.db import Database, InstrumentedPool, create_engines, is_write
from freightscale.exceptions import ConfigurationError
from freightscale.settings import FreightScaleSettings
from freightscale.settings.database import DatabaseSettings


def test_defaults_fit_the_budget() -> None:
    s = DatabaseSettings()
    assert s.is_sqlite
    assert s.worst_case_connections == 15
    assert s.max_per_process * 6 <= s.connection_budget < 100


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("FREIGHTSCALE_DATABASE__POOL_SIZE", "0", "FREIGHTSCALE_DATABASE__POOL_SIZE"),
        ("FREIGHTSCALE_DATABASE__URL", "mysql://h/db", "FREIGHTSCALE_DATABASE__URL"),
        ("FREIGHTSCALE_DATABASE__URL", "postgresql+asyncpg://h:port/db", "port must be a number"),
        ("FREIGHTSCALE_DATABASE__URL", "postgresql+asyncpg://h:5432", "names no database"),
        ("FREIGHTSCALE_DATABASE__MAX_REPLICA_LAG", "0", "FREIGHTSCALE_DATABASE__MAX_REPLICA_LAG"),
        ("FREIGHTSCALE_DATABASE__STATEMENT_CACHE_SIZE", "-1", "STATEMENT_CACHE_SIZE"),
    ],
)
def test_bad_settings_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigurationError) as info:
        FreightScaleSettings()
    message = str(info.value)
    assert needle in message
    assert env in message


def test_bad_url_message_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FREIGHTSCALE_DATABASE__URL", "postgresql+asyncpg://u:s3cret@h:x/db")
    with pytest.raises(ConfigurationError) as info:
        FreightScaleSettings()
    assert "FREIGHTSCALE_DATABASE__URL" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_replicas_need_a_postgres_primary() -> None:
    with pytest.raises(ValidationError, match="replica_urls are only allowed"):
        DatabaseSettings(replica_urls=["postgresql+asyncpg://h/db"])
    with pytest.raises(ValidationError, match="scheme 'sqlite'"):
        DatabaseSettings(url="postgresql+asyncpg://h/db", replica_urls=["sqlite:///x.db"])


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FREIGHTSCALE_DATABASE__URL", "postgresql+asyncpg://p/db")
    monkeypatch.setenv("FREIGHTSCALE_DATABASE__REPLICA_URLS", '["postgresql+asyncpg://r/db"]')
    monkeypatch.setenv("FREIGHTSCALE_DATABASE__PGBOUNCER_TRANSACTION_MODE", "true")
    monkeypatch.setenv("FREIGHTSCALE_DATABASE__WORKERS", "4")
    db = FreightScaleSettings().database
    assert db.replica_urls[0].get_secret_value() == "postgresql+asyncpg://r/db"
    assert db.pgbouncer_transaction_mode
    assert db.worst_case_connections == 4 * 15
    assert "r/db" not in repr(db)


async def test_postgres_engine_gets_every_pool_and_server_setting(database_url: str) -> None:
    settings = DatabaseSettings(
        url=database_url,
        pool_size=4,
        max_overflow=2,
        pool_timeout=1.5,
        pool_recycle=600,
        statement_timeout_ms=1234,
        application_name="fs-engine-test",
    )
    engines = create_engines(settings)
    try:
        pool = engines.primary.pool
        assert isinstance(pool, InstrumentedPool)
        assert pool.size() == 4
        assert pool.timeout() == 1.5
        assert pool._max_overflow == 2
        assert pool._recycle == 600
        assert pool._pre_ping is True
        async with engines.primary.connect() as conn:
            assert await conn.scalar(text("SHOW statement_timeout")) == "1234ms"
            assert await conn.scalar(text("SHOW application_name")) == "fs-engine-test"
    finally:
        await engines.dispose()


async def test_statement_cache_on_and_pgbouncer_mode(database_url: str) -> None:
    query = text("SELECT count(*) FROM pg_class WHERE relname <> :k")
    for pgbouncer, expected_cached in ((False, True), (True, False)):
        engines = create_engines(
            DatabaseSettings(url=database_url, pgbouncer_transaction_mode=pgbouncer)
        )
        try:
            async with engines.primary.connect() as conn:
                for _ in range(5):
                    assert await conn.scalar(query, {"k": "x"}) > 0
                names = (
                    (
                        await conn.execute(
                            text("SELECT name FROM pg_prepared_statements WHERE statement LIKE :s"),
                            {"s": "%relname <>%"},
                        )
                    )
                    .scalars()
                    .all()
                )
                # Cached: one prepared statement reused; pgbouncer: none kept, or
                # only uniquely named ones, never asyncpg's numbered names.
                if expected_cached:
                    assert len(names) == 1
                else:
                    assert all(n.startswith("__fs_") for n in names)
                    assert len(names) <= 1
        finally:
            await engines.dispose()


async def test_sqlite_default_engine(tmp_path: Path) -> None:
    settings = DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", pool_size=2)
    db = Database(settings)
    try:
        assert isinstance(db.engines.primary.pool, InstrumentedPool)
        async with db.session() as session:
            await session.execute(text("CREATE TABLE t (id integer primary key)"))
            await session.execute(text("INSERT INTO t VALUES (1)"))
            await session.commit()
            assert await session.scalar(text("SELECT count(*) FROM t")) == 1
            assert await session.scalar(text("PRAGMA journal_mode")) == "wal"
    finally:
        await db.aclose()
    memory = create_engines(DatabaseSettings(url="sqlite+aiosqlite://"))
    assert isinstance(memory.primary.pool, StaticPool)
    await memory.dispose()


t = Table("t", MetaData(), Column("id", Integer, primary_key=True))


@pytest.mark.parametrize(
    ("clause", "write"),
    [
        (select(t), False),
        (select(t).with_for_update(), True),
        (select(t).with_for_update(read=True), True),
        (select(t).union(select(t)), False),
        (insert(t), True),
        (update(t).values(id=1), True),
        (delete(t), True),
        (text("SELECT 1"), False),
        (text("  /* hint */ select * from t"), False),
        (text("-- c\nSELECT 1"), False),
        (text("VALUES (1)"), False),
        (text("SELECT * FROM t FOR UPDATE"), True),
        (text("SELECT * FROM t FOR NO KEY UPDATE"), True),
        (text("SELECT * INTO t2 FROM t"), True),
        (text("SELECT nextval('s')"), True),
        (text("SELECT pg_advisory_lock(1)"), True),
        (text("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x"), True),
        (text("INSERT INTO t VALUES (1)"), True),
        (text("CREATE TABLE z (i int)"), True),
        (None, True),
    ],
)
def test_is_write(clause: object, write: bool) -> None:
    assert is_write(clause) is write
