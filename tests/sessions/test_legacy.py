"""The legacy file-store import (CLI) and the zero-logout cutover, on the generated fixture."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from freightscale.cli import main
from freightscale.sessions import SessionMiddleware
from freightscale.sessions.legacy import import_file
from tests.sessions.apps import starlette_app
from tests.sessions.conftest import settings

FIXTURE = Path("/work/shared/fixtures/make_session_store.py")
if not FIXTURE.exists():  # the repository layout: ../shared/fixtures beside the checkout
    FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "make_session_store.py"
BROKEN = {
    "broken-not-an-object",
    "broken-null",
    "broken-no-cookie",
    "broken-bad-expiry",
    "broken-list",
    "",
}


def generate(out: Path, *extra: str) -> Path:
    subprocess.run(
        [sys.executable, str(FIXTURE), str(out), *extra], check=True, capture_output=True
    )
    return out


@pytest.fixture(scope="module")
def legacy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly generated legacy store (5,000 sessions, some expired, six broken)."""
    return generate(tmp_path_factory.mktemp("legacy"))


def load_store(legacy_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((legacy_dir / "session-store.json").read_text())
    return result


def expiry(entry: Any) -> float:
    return datetime.fromisoformat(entry["cookie"]["expires"].replace("Z", "+00:00")).timestamp()


def live_bounds(store: dict[str, Any], start: float, end: float) -> tuple[int, int]:
    good = [v for k, v in store.items() if k not in BROKEN]
    return sum(expiry(v) > end for v in good), sum(expiry(v) > start for v in good)


def redis_keys(url: str, prefix: str) -> dict[bytes, bytes]:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:session:*", count=1000))
        values = client.mget(keys) if keys else []
        # A key that expired between SCAN and MGET reads as None: it is gone.
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}
    finally:
        client.close()


def test_import_into_redis_is_complete_and_idempotent(
    legacy_dir: Path, redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = load_store(legacy_dir)
    path = str(legacy_dir / "session-store.json")
    start = time.time()
    status = main(["sessions", "import", path, "--to", redis_url, "--key-prefix", redis_prefix])
    end = time.time()
    out, err = capsys.readouterr()
    assert status == 1  # six entries were rejected
    for sid in BROKEN:
        assert f"rejected {sid!r}: " in err
    assert err.count("rejected ") == 6
    low, high = live_bounds(store, start, end)
    keys = redis_keys(redis_url, redis_prefix)
    assert low <= len(keys) <= high
    assert 0 < len(keys) < 5000  # some sessions were expired and skipped
    assert "rejected 6" in out
    # A live session keeps its data (minus the cookie block) and its remaining lifetime.
    client = redis.Redis.from_url(redis_url)
    try:
        sid, entry = next(
            (k, v) for k, v in store.items() if k not in BROKEN and expiry(v) > end + 60
        )
        key = f"{redis_prefix}:session:legacy:{sid}"
        record = json.loads(client.get(key))
        assert record["d"] == {k: v for k, v in entry.items() if k != "cookie"}
        assert record["v"] == 1
        assert abs(client.pttl(key) / 1000 - (expiry(entry) - time.time())) < 5
        expired = next(k for k, v in store.items() if k not in BROKEN and expiry(v) < start)
        assert client.exists(f"{redis_prefix}:session:legacy:{expired}") == 0
    finally:
        client.close()
    # Running it again changes nothing.
    status = main(["sessions", "import", path, "--to", redis_url, "--key-prefix", redis_prefix])
    out, _ = capsys.readouterr()
    assert status == 1
    assert "imported 0," in out
    after = redis_keys(redis_url, redis_prefix)
    # Nothing new, nothing rewritten; only a session whose lifetime ended
    # between the two runs may have expired out of Redis meanwhile.
    gone = keys.keys() - after.keys()
    assert all(json.loads(keys[k])["e"] <= time.time() + 1 for k in gone)
    assert after == {k: v for k, v in keys.items() if k not in gone}


def test_import_into_postgres(
    legacy_dir: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    path = str(legacy_dir / "session-store.json")
    args = ["sessions", "import", path, "--to", database_url, "--table", "legacy_import_test"]
    start = time.time()
    assert main(args) == 1
    end = time.time()
    capsys.readouterr()

    async def count() -> tuple[int, int]:
        engine = create_async_engine(database_url)
        async with engine.connect() as conn:
            rows = (
                await conn.execute(text("SELECT count(*) FROM legacy_import_test"))
            ).scalar_one()
            total = (
                await conn.execute(text("SELECT sum(version) FROM legacy_import_test"))
            ).scalar_one()
        await engine.dispose()
        return int(rows), int(total)

    rows, versions = asyncio.run(count())
    low, high = live_bounds(load_store(legacy_dir), start, end)
    assert low <= rows <= high
    assert versions == rows
    assert main(args) == 1
    out, _ = capsys.readouterr()
    assert "imported 0," in out
    assert asyncio.run(count()) == (rows, versions)


def test_dry_run_writes_nothing(
    legacy_dir: Path, redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(legacy_dir / "session-store.json")
    status = main(
        ["sessions", "import", path, "--to", redis_url, "--key-prefix", redis_prefix, "--dry-run"]
    )
    out, _ = capsys.readouterr()
    assert status == 1
    assert "would import" in out
    assert redis_keys(redis_url, redis_prefix) == {}


def test_wrapped_file_and_clean_exit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    entry = {"cookie": {"expires": datetime.fromtimestamp(now + 3600).astimezone().isoformat()},
             "passport": {"user": 1}}  # fmt: skip
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"sessions": {"abc": entry, "def": entry}}))
    assert main(["sessions", "import", str(path), "--dry-run"]) == 0
    assert "would import 2," in capsys.readouterr().out


async def test_truncated_file_imports_what_it_can(tmp_path: Path) -> None:
    from freightscale.sessions import MemorySessionBackend

    entry = {"cookie": {"expires": "2999-01-01T00:00:00.000Z"}, "n": 1}
    text = json.dumps({f"id{i}": entry for i in range(50)})
    path = tmp_path / "cut.json"
    path.write_text(text[: len(text) // 2])
    backend = MemorySessionBackend()
    report = await import_file(path, backend, batch_size=10)
    assert report.exit_status == 2
    assert report.fatal is not None
    assert "re-run is safe" in report.fatal
    assert 10 < report.imported < 50
    assert await backend.load("legacy:id0") is not None


def test_not_a_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    assert main(["sessions", "import", str(path), "--dry-run"]) == 2
    assert "not a JSON object" in capsys.readouterr().err
    assert main(["sessions", "import", str(tmp_path / "missing.json"), "--dry-run"]) == 2


@pytest.mark.slow
def test_streaming_keeps_memory_bounded(legacy_dir: Path, tmp_path: Path) -> None:
    """Peak RSS of a dry-run import does not grow with the file (json.load would)."""
    big = generate(tmp_path, "--count", "15000") / "session-store.json"
    small = legacy_dir / "session-store.json"
    probe = (
        "import asyncio, resource, sys; from pathlib import Path; "
        "from freightscale.sessions.legacy import import_file; "
        "r = asyncio.run(import_file(Path(sys.argv[1]), None)); "
        "print(r.read, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )

    def peak_kib(path: Path) -> tuple[int, int]:
        out = subprocess.run(
            [sys.executable, "-c", probe, str(path)], check=True, capture_output=True, text=True
        ).stdout.split()
        return int(out[0]), int(out[1])

    small_read, small_peak = peak_kib(small)
    big_read, big_peak = peak_kib(big)
    assert (small_read, big_read) == (5006, 15006)
    growth = big.stat().st_size - small.stat().st_size
    assert growth > 3_000_000
    # A whole-file parse would add several times the file's growth; streaming adds ~nothing.
    assert (big_peak - small_peak) * 1024 < growth / 2, (small_peak, big_peak, growth)


# -- zero-logout cutover --------------------------------------------------------


@pytest.fixture(scope="module")
def cutover(legacy_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import uuid

    prefix = f"fstest-{uuid.uuid4().hex[:12]}"
    path = str(legacy_dir / "session-store.json")
    main(["sessions", "import", path, "--to", redis_url, "--key-prefix", prefix, "--no-progress"])
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


async def test_legacy_cookies_keep_their_sessions(
    legacy_dir: Path, cutover: str, redis_url: str
) -> None:
    from freightscale.backends.redis import create_redis_client
    from freightscale.sessions.redis import RedisSessionBackend

    samples = json.loads((legacy_dir / "legacy-cookies.json").read_text())
    store = load_store(legacy_dir)
    backend = RedisSessionBackend(
        create_redis_client(redis_url), key_prefix=cutover, owns_client=True
    )
    app = SessionMiddleware(
        starlette_app(), settings(legacy_secret=samples["secret"]), backend=backend
    )
    outcomes: dict[str, int] = {}
    try:
        for sample in samples["cookies"]:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://test"
            ) as c:
                response = await c.get("/get", headers={"cookie": sample["cookie"]})
                assert response.status_code == 200
                body = response.json()
                set_cookies = response.headers.get_list("set-cookie")
                expected = {k: v for k, v in store[sample["sid"]].items() if k != "cookie"} \
                    if sample["sid"] in store else None  # fmt: skip
                if sample["expect"] == "accepted":
                    assert body["data"] == expected
                    assert any(h.startswith("fs_session=") for h in set_cookies)
                    assert any(h.startswith("connect.sid=;") and "Max-Age=0" in h
                               for h in set_cookies)  # fmt: skip
                    # The new cookie carries the session from now on.
                    assert (await c.get("/get")).json()["data"] == expected
                    # The legacy cookie cannot be replayed: the old id is a tombstone.
                    c.cookies.clear()
                    again = await c.get("/get", headers={"cookie": sample["cookie"]})
                    assert again.json()["data"] == {}
                else:
                    assert body["data"] == {}, sample
                    assert not any(h.startswith("fs_session=") for h in set_cookies)
            outcomes[sample["expect"]] = outcomes.get(sample["expect"], 0) + 1
    finally:
        await backend.aclose()
    assert outcomes.get("accepted", 0) > 5
    assert outcomes.get("rejected") == 2
    assert outcomes.get("unknown") == 1


async def test_reimport_never_resurrects_a_migrated_session(
    legacy_dir: Path, cutover: str, redis_url: str
) -> None:
    # Runs after the cutover test migrated the accepted sessions (module order).
    import asyncio

    samples = json.loads((legacy_dir / "legacy-cookies.json").read_text())
    accepted = [s for s in samples["cookies"] if s["expect"] == "accepted"]
    client = redis.Redis.from_url(redis_url)
    key = f"{cutover}:session:legacy:{accepted[0]['sid']}"
    before = client.get(key)
    client.close()
    assert before is not None
    assert json.loads(before)["d"] is None
    path = legacy_dir / "session-store.json"
    status = await asyncio.to_thread(
        main, ["sessions", "import", str(path), "--to", redis_url, "--key-prefix", cutover]
    )
    assert status == 1
    client = redis.Redis.from_url(redis_url)
    assert client.get(key) == before
    client.close()
