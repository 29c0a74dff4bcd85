"""One behaviour suite over every session backend (memory, Redis, Redis Cluster, PostgreSQL)."""

from __future__ import annotations

import asyncio
import time

import pytest

from freightscale.sessions import CorruptSessionError, SessionBackend
from freightscale.sessions.backends import decode_record


async def test_absent_session_loads_as_none(backend: SessionBackend) -> None:
    assert await backend.load("nope") is None


async def test_create_then_load(backend: SessionBackend) -> None:
    exp = time.time() + 60
    result = await backend.compare_and_set("s1", {"user": 7, "tags": ["a"]}, exp, version=0)
    assert result.ok
    assert result.current is not None
    assert result.current.version == 1
    record = await backend.load("s1")
    assert record is not None
    assert record.data == {"user": 7, "tags": ["a"]}
    assert record.version == 1
    assert abs(record.expires_at - exp) < 0.01


async def test_values_json_allows_round_trip(backend: SessionBackend) -> None:
    # Integers beyond 64 bits are valid JSON (the fast parser refuses them; the stdlib reads them).
    data = {"big": 2**70, "neg": -(2**65), "text": "zoë ✓", "nested": {"l": [1.5, None, True]}}
    assert (await backend.compare_and_set("s1", data, time.time() + 60, version=0)).ok
    record = await backend.load("s1")
    assert record is not None
    assert record.data == data


def test_decode_record_reads_what_the_stdlib_reads_and_rejects_the_rest() -> None:
    record = decode_record(b'{"v":2,"e":1e10,"d":{"n":1180591620717411303424,"x":NaN}}')
    assert record.version == 2
    assert record.data is not None
    assert record.data["n"] == 2**70
    assert record.data["x"] != record.data["x"]  # NaN, as json.loads reads it
    deep = b'{"v":1,"e":1e10,"d":{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    for raw in (deep, b"\xff\xfe", b'{"v":1,"e":1e10,"d":{"a":1}', b"[1]"):
        with pytest.raises(CorruptSessionError):
            decode_record(raw)


async def test_create_refuses_an_existing_id(backend: SessionBackend) -> None:
    exp = time.time() + 60
    assert (await backend.compare_and_set("s1", {"a": 1}, exp, version=0)).ok
    second = await backend.compare_and_set("s1", {"a": 2}, exp, version=0)
    assert not second.ok
    assert second.current is not None
    assert second.current.data == {"a": 1}
    record = await backend.load("s1")
    assert record is not None
    assert record.data == {"a": 1}


async def test_cas_conflict_returns_the_winner(backend: SessionBackend) -> None:
    exp = time.time() + 60
    await backend.compare_and_set("s1", {"n": 0}, exp, version=0)
    assert (await backend.compare_and_set("s1", {"n": 1}, exp, version=1)).ok
    stale = await backend.compare_and_set("s1", {"n": 99}, exp, version=1)
    assert not stale.ok
    assert stale.current is not None
    assert stale.current.version == 2
    assert stale.current.data == {"n": 1}
    record = await backend.load("s1")
    assert record is not None
    assert record.data == {"n": 1}
    assert record.version == 2


async def test_concurrent_cas_exactly_one_wins(backend: SessionBackend) -> None:
    exp = time.time() + 60
    await backend.compare_and_set("s1", {"n": 0}, exp, version=0)
    results = await asyncio.gather(
        *(backend.compare_and_set("s1", {"n": i}, exp, version=1) for i in range(10))
    )
    assert sum(r.ok for r in results) == 1


async def test_update_of_deleted_session_fails(backend: SessionBackend) -> None:
    exp = time.time() + 60
    await backend.compare_and_set("s1", {"n": 0}, exp, version=0)
    await backend.delete("s1")
    result = await backend.compare_and_set("s1", {"n": 1}, exp, version=1)
    assert not result.ok
    assert result.current is None
    assert await backend.load("s1") is None


async def test_tombstone_loads_as_none_and_blocks_create(backend: SessionBackend) -> None:
    exp = time.time() + 60
    await backend.compare_and_set("legacy:x", {"n": 0}, exp, version=0)
    assert (await backend.compare_and_set("legacy:x", None, exp, version=1)).ok
    assert await backend.load("legacy:x") is None
    assert not (await backend.compare_and_set("legacy:x", {"n": 0}, exp, version=0)).ok
    assert await backend.import_many([("legacy:x", {"n": 5}, exp)]) == [False]


async def test_expiry(backend: SessionBackend) -> None:
    await backend.load("warm-up")  # PostgreSQL creates its table on first use
    await backend.compare_and_set("short", {"n": 0}, time.time() + 0.5, version=0)
    assert await backend.load("short") is not None
    await asyncio.sleep(0.65)
    assert await backend.load("short") is None
    # An expired id is free again.
    assert (await backend.compare_and_set("short", {"n": 1}, time.time() + 60, version=0)).ok


async def test_import_many_is_idempotent(backend: SessionBackend) -> None:
    exp = time.time() + 60
    items = [(f"legacy:{i}", {"i": i}, exp) for i in range(10)]
    assert await backend.import_many(items) == [True] * 10
    assert await backend.import_many(items) == [False] * 10
    record = await backend.load("legacy:3")
    assert record is not None
    assert record.data == {"i": 3}
    assert record.version == 1


async def test_check(backend: SessionBackend) -> None:
    await backend.check()


async def test_postgres_cleanup_deletes_expired_rows_in_batches(database_url: str) -> None:
    from sqlalchemy import text

    from freightscale.sessions.postgres import PostgresSessionBackend

    now = [time.time()]
    backend = PostgresSessionBackend.from_url(
        database_url,
        table_name="sessions_cleanup_test",
        cleanup_batch_size=3,
        cleanup_interval=3600,
        clock=lambda: now[0],
    )
    try:
        assert backend._cleanup_task is None  # nothing runs before first use
        for i in range(10):
            await backend.compare_and_set(f"old{i}", {"i": i}, now[0] + 10, version=0)
        for i in range(4):
            await backend.compare_and_set(f"live{i}", {"i": i}, now[0] + 3600, version=0)
        assert backend._cleanup_task is not None  # started lazily by the first call
        now[0] += 60
        assert await backend.delete_expired() == 10
        async with backend.engine.connect() as conn:
            ids = (await conn.execute(text("SELECT id FROM sessions_cleanup_test"))).scalars()
            assert sorted(ids) == [f"live{i}" for i in range(4)]
            indexes = (
                await conn.execute(
                    text(
                        "SELECT indexdef FROM pg_indexes WHERE tablename = 'sessions_cleanup_test'"
                    )
                )
            ).scalars()
            assert any("(expires_at)" in d for d in indexes)
    finally:
        await backend.aclose()
    assert backend._cleanup_task is None
