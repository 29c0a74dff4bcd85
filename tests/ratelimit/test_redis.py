"""Redis-only behaviour: round trips, Cluster, outages, approximate mode, processes."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from freightscale.ratelimit import Rule
from freightscale.settings.ratelimit import RateLimitSettings
from tests.ratelimit.conftest import client_for
from tests.servers import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


def commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_one_round_trip_per_request_with_several_limits(make_limiter, redis_server) -> None:
    cfg = RateLimitSettings(default="50/second; 100/minute; 1000/hour", key="ip", timeout=2.0)
    mw = make_limiter(cfg, redis=redis_server.url)
    await mw.startup()  # connects and loads the script
    async with client_for(mw) as client:
        assert (await client.get("/")).status_code == 200
        observer = redis.Redis.from_url(redis_server.url)
        before = commandstats(observer)
        for _ in range(20):
            assert (await client.get("/")).status_code == 200
        after = commandstats(observer)
        observer.close()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta = {k: v for k, v in delta.items() if v}
    assert delta.pop("info") == 1
    # one EVALSHA per request; everything else ran inside that script
    assert delta.pop("evalsha") == 20
    assert set(delta) <= {"lindex", "lpush", "ltrim", "expire"}, delta


async def test_concurrent_requests_each_send_one_evalsha_and_stay_exact(
    make_limiter, redis_server
) -> None:
    # concurrent requests are sent together (one write per event-loop tick), each
    # still its own EVALSHA: the limit is exact inside a batch too
    cfg = RateLimitSettings(default="20/minute; 100/hour", key="ip", timeout=2.0)
    mw = make_limiter(cfg, redis=redis_server.url)
    await mw.startup()
    observer = redis.Redis.from_url(redis_server.url)
    before = commandstats(observer)
    async with client_for(mw) as client:
        responses = await asyncio.gather(*(client.get("/") for _ in range(30)))
    after = commandstats(observer)
    observer.close()
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 20 + [429] * 10
    allowed = [r for r in responses if r.status_code == 200]
    remaining = sorted(int(r.headers["ratelimit"].split(";r=")[1].split(";")[0]) for r in allowed)
    assert remaining == list(range(20))  # every allowed request saw its own count
    assert after.get("evalsha", 0) - before.get("evalsha", 0) == 30


async def test_cluster_holds_the_limit_under_concurrency(make_limiter, redis_cluster_url) -> None:
    for strategy in ("moving-window", "fixed-window", "sliding-window-counter"):
        # a generous timeout: this test is about exactness, not the outage policy
        cfg = RateLimitSettings(
            default="10/minute; 50/hour",
            key="ip",
            strategy=strategy,
            timeout=5.0,
            key_prefix=f"t{time.time_ns()}",
        )
        mw = make_limiter(cfg, redis=redis_cluster_url)
        await mw.startup()
        async with client_for(mw) as client:
            responses = await asyncio.gather(*(client.get("/") for _ in range(30)))
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) == 10, (strategy, codes)
        assert codes.count(429) == 20


async def test_outage_fails_open_within_timeout_and_recovers(
    make_limiter, redis_server, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="freightscale.ratelimit")
    cfg = RateLimitSettings(
        default="3/minute", key="ip", fail_mode="open", timeout=0.2, retry_interval=0.3
    )
    mw = make_limiter(cfg, redis=redis_server.url)
    await mw.startup()
    async with client_for(mw) as client:
        assert (await client.get("/")).status_code == 200
        redis_server.stop()
        start = time.perf_counter()
        codes = [(await client.get("/")).status_code for _ in range(5)]
        elapsed = time.perf_counter() - start
        # the local limiter has the same rule: protection never drops to zero
        assert codes == [200, 200, 200, 429, 429]
        assert elapsed < 0.2 + 0.5
        down = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(down) == 1
        redis_server.start()
        await asyncio.sleep(0.35)
        ok = await client.get("/", headers={})
        # shared counters again: the restarted (empty) Redis counts this request
        assert ok.status_code == 200
        assert ok.headers["ratelimit"].startswith('"default";r=2;')
        keys = redis.Redis.from_url(redis_server.url).keys("*")
        assert len(keys) == 1
    assert any("recovered" in r.getMessage() for r in caplog.records)


async def test_hung_redis_never_delays_a_request_beyond_the_timeout(
    make_limiter, redis_server
) -> None:
    # redis-py alone would wait socket_timeout (2 s) per attempt, with retries
    cfg = RateLimitSettings(default="100/minute", key="ip", timeout=0.2, retry_interval=60)
    mw = make_limiter(cfg, redis=redis_server.url)
    await mw.startup()
    async with client_for(mw) as client:
        assert (await client.get("/")).status_code == 200
        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            start = time.perf_counter()
            # concurrent requests wait on one batch: its deadline bounds each of them
            firsts = await asyncio.gather(*(client.get("/") for _ in range(5)))
            first_elapsed = time.perf_counter() - start
            start = time.perf_counter()
            second = await client.get("/")
            second_elapsed = time.perf_counter() - start
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
    assert [r.status_code for r in firsts] == [200] * 5
    assert first_elapsed < 0.2 + 0.5  # the timeout plus scheduling slack on a busy machine
    # during the outage requests do not touch Redis at all
    assert second.status_code == 200
    assert second_elapsed < first_elapsed


async def test_outage_fails_closed_with_503(make_limiter, redis_server) -> None:
    cfg = RateLimitSettings(default="3/minute", key="ip", fail_mode="closed", timeout=0.2)
    mw = make_limiter(cfg, redis=redis_server.url)
    await mw.startup()
    async with client_for(mw) as client:
        assert (await client.get("/")).status_code == 200
        redis_server.stop()
        refused = await client.get("/")
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert "FAIL_MODE" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) >= 1


async def test_approximate_mode_reconciles_and_bounds_overshoot(make_limiter, redis_url, prefix):
    limit = 20
    cfg = RateLimitSettings(
        default=f"{limit}/minute", key="ip", approximate=True, sync_interval=5.0, key_prefix=prefix
    )
    a = make_limiter(cfg, redis=redis_url)
    b = make_limiter(cfg, redis=redis_url)
    assert a.approximate is not None
    assert b.approximate is not None
    async with client_for(a) as ca, client_for(b) as cb:
        # one instance alone is exact
        codes = [(await ca.get("/")).status_code for _ in range(12)]
        assert codes == [200] * 12
        await a.approximate.sync()
        assert (await cb.get("/")).status_code == 200  # b's first hit: decided locally
        await b.approximate.sync()
        # b learnt a's 12 hits (plus its own): exactly 7 left for it
        codes = [(await cb.get("/")).status_code for _ in range(10)]
        assert codes == [200] * 7 + [429] * 3
        await b.approximate.sync()
        await a.approximate.sync()
        assert (await ca.get("/")).status_code == 429

    # worst case: N instances hammered between two syncs admit at most N * limit
    cfg2 = cfg.model_copy(update={"key_prefix": prefix + "w", "sync_interval": 0.01})
    instances = [make_limiter(cfg2, redis=redis_url) for _ in range(3)]
    clients = [client_for(mw) for mw in instances]
    responses = await asyncio.gather(*(clients[i % 3].get("/") for i in range(150)))
    for c in clients:
        await c.aclose()
    allowed = sum(r.status_code == 200 for r in responses)
    assert limit <= allowed <= 3 * limit
    for mw in instances:
        assert mw.approximate is not None
        await mw.approximate.sync()
    total = int(
        redis.Redis.from_url(redis_url).get(
            next(iter(redis.Redis.from_url(redis_url).scan_iter(f"*{prefix}w*")))
        )
    )
    assert total == allowed  # every admitted hit reached Redis


def _start_app(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.ratelimit.proc_app:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log", "--lifespan", "off"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.slow
async def test_two_processes_allow_exactly_the_limit(redis_url, redis_prefix) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        "RL_LIMITS": "40/minute",
        "RL_PREFIX": redis_prefix,
        "RL_REDIS_URL": redis_url,
    }
    ports = [free_port(), free_port()]
    procs = [_start_app(p, env) for p in ports]
    try:
        for port in ports:
            wait_port(port, timeout=20)
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(limits=limits, timeout=10) as client:
            responses = await asyncio.gather(
                *(client.get(f"http://127.0.0.1:{ports[i % 2]}/") for i in range(120))
            )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 40, codes
    assert codes.count(429) == 80
    by_port = {
        p: sum(1 for i, c in enumerate(codes) if c == 200 and ports[i % 2] == p) for p in ports
    }
    assert all(n > 0 for n in by_port.values())  # both processes served allowed requests


def test_rule_objects_are_hashable_data() -> None:
    rule = Rule.create("r", "1/second", path="/a", methods=["get"])
    assert rule.match.matches("/a", "GET")
    assert rule.limits[0].amount == 1


async def test_client_provider_resolves_once_the_shared_client_opens(
    make_limiter, redis_url, redis_prefix
) -> None:
    import redis.asyncio as aioredis

    from freightscale.backends.redis import driver_kwargs

    holder: dict[str, object] = {}
    cfg = RateLimitSettings(default="2/minute", key="ip", timeout=2.0)
    mw = make_limiter(cfg, redis=lambda: holder.get("client"), redis_prefix=redis_prefix)
    async with client_for(mw) as client:
        assert (await client.get("/")).status_code == 200  # before "startup": local counters
        assert mw.shared is None
        holder["client"] = shared = aioredis.Redis.from_url(redis_url, **driver_kwargs())
        await mw.startup()
        assert mw.shared is not None
        codes = [(await client.get("/")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]  # Redis counts from zero: the local hit stayed local
    assert await shared.keys(f"{redis_prefix}*")
    await mw.aclose()  # does not close a client it did not open
    assert await shared.ping()
    await shared.aclose()


async def test_sentinel_holds_the_limit(make_limiter, redis_server, tmp_path) -> None:
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor fsmaster 127.0.0.1 {redis_server.port} 1\n"
    )
    binary = shutil.which("redis-server")
    assert binary is not None
    sentinel = subprocess.Popen(
        [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port)
        cfg = RateLimitSettings(default="3/minute; 10/hour", key="ip", timeout=2.0)
        mw = make_limiter(cfg, redis=f"redis+sentinel://127.0.0.1:{port}/fsmaster")
        await mw.startup()
        async with client_for(mw) as client:
            responses = await asyncio.gather(*(client.get("/") for _ in range(8)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [200] * 3 + [429] * 5
        # the counters live on the master the sentinel named
        master = redis.Redis.from_url(redis_server.url)
        assert master.keys("fs:rl:*")
        master.close()
    finally:
        sentinel.terminate()
        sentinel.wait(timeout=10)


async def test_approximate_mode_survives_an_outage_and_resyncs(
    make_limiter, redis_server, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="freightscale.ratelimit")
    cfg = RateLimitSettings(
        default="5/minute", key="ip", approximate=True, sync_interval=0.05, timeout=0.2
    )
    mw = make_limiter(cfg, redis=redis_server.url)
    async with client_for(mw) as client:
        assert [(await client.get("/")).status_code for _ in range(2)] == [200, 200]
        redis_server.stop()
        start = time.perf_counter()
        codes = [(await client.get("/")).status_code for _ in range(4)]
        assert time.perf_counter() - start < 0.5  # decided locally, no waiting on Redis
        assert codes == [200, 200, 200, 429]  # the local count stays exact
        await asyncio.sleep(0.3)  # a few failed syncs: one log line
        assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1
        redis_server.start()
        await asyncio.sleep(0.4)
    observer = redis.Redis.from_url(redis_server.url)
    (key,) = observer.keys("*")
    assert int(observer.get(key)) >= 3  # hits admitted during the outage reached Redis
    observer.close()
    assert any("recovered" in r.getMessage() for r in caplog.records)
