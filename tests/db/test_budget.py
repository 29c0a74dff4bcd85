"""``freightscale check-config`` and the startup budget warning."""

from __future__ import annotations

import logging

import pytest

from freightscale.cli import main
from freightscale.db import check_budget, warn_if_over_budget
from freightscale.exceptions import ConfigurationError
from freightscale.settings.database import DatabaseSettings
from tests.pg_servers import PgCluster, free_port


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("FREIGHTSCALE_") and not key.startswith("FREIGHTSCALE_TEST_"):
            monkeypatch.delenv(key)


def test_within_budget_prints_a_table_and_exits_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    monkeypatch.setenv("FREIGHTSCALE_DATABASE__URL", database_url)
    monkeypatch.setenv("FREIGHTSCALE_DATABASE__INSTANCES", "2")
    monkeypatch.setenv("FREIGHTSCALE_DATABASE__WORKERS", "3")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "instances 2 x workers 3 x (pool_size 10 + max_overflow 5) = 90" in out
    assert "primary" in out
    assert "OK" in out
    # The shared server answered: its limit is shown.
    assert "server limit" in out
    assert "not queried" not in out


def test_over_the_budget_exits_non_zero_naming_the_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FREIGHTSCALE_DATABASE__URL", "postgresql+asyncpg://u:pw@db1:5432/app")
    monkeypatch.setenv(
        "FREIGHTSCALE_DATABASE__REPLICA_URLS", '["postgresql+asyncpg://u:pw@db2:5432/app"]'
    )
    assert main(["check-config", "--no-query", "--instances", "4", "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "= 120" in out
    assert "OVER" in out
    assert "FREIGHTSCALE_DATABASE__CONNECTION_BUDGET=90" in out
    assert "POOL_SIZE" in out
    assert "replica-0" in out
    assert "db2:5432/app" in out
    assert "pw" not in out


def test_over_the_server_max_connections(
    pg_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Our own server has max_connections = 60 (3 reserved): 4 x 15 = 60 > 57.
    monkeypatch.setenv("FREIGHTSCALE_DATABASE__URL", pg_cluster.primary.url)
    monkeypatch.setenv("FREIGHTSCALE_DATABASE__CONNECTION_BUDGET", "1000")
    assert main(["check-config", "--workers", "4"]) == 1
    out = capsys.readouterr().out
    assert "max_connections 60 - 3 reserved = 57" in out
    assert "57 (60-3)" in out


def test_unreachable_server_is_reported_not_fatal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    monkeypatch.setenv("FREIGHTSCALE_DATABASE__URL", f"postgresql+asyncpg://u@127.0.0.1:{port}/x")
    assert main(["check-config", "--timeout", "1"]) == 0
    assert "unreachable" in capsys.readouterr().out


def test_invalid_settings_exit_two(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FREIGHTSCALE_DATABASE__POOL_SIZE", "0")
    assert main(["check-config", "--no-query"]) == 2
    assert "FREIGHTSCALE_DATABASE__POOL_SIZE" in capsys.readouterr().out
    assert main(["check-config", "--no-query", "--workers", "0"]) == 2


def test_sqlite_has_no_server_budget(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config"]) == 0
    assert "sqlite" in capsys.readouterr().out


async def test_startup_warning_and_raise(caplog: pytest.LogCaptureFixture) -> None:
    settings = DatabaseSettings(url="postgresql+asyncpg://h/db", workers=7)
    with caplog.at_level(logging.WARNING, logger="freightscale.db"):
        report = await warn_if_over_budget(settings, query_servers=False)
    assert not report.ok
    assert "CONNECTION_BUDGET=90" in caplog.text
    with pytest.raises(ConfigurationError, match="connection budget exceeded"):
        report.raise_for_problems()
    ok = await check_budget(settings, workers=1, query_servers=False)
    assert ok.ok
    ok.raise_for_problems()


async def test_database_lifespan_warns_in_the_background(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from freightscale.db import Database

    db = Database(DatabaseSettings(url=database_url, workers=7))
    with caplog.at_level(logging.WARNING, logger="freightscale.db"):
        async with db.lifespan():
            import anyio

            with anyio.fail_after(10):
                while "connection budget" not in caplog.text:
                    await anyio.sleep(0.05)
    assert "= 105 exceeds FREIGHTSCALE_DATABASE__CONNECTION_BUDGET=90" in caplog.text
