"""Settings of the database layer."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from freightscale.settings._base import Section, check_url_scheme

__all__ = ["DATABASE_SCHEMES", "DatabaseSettings"]

DATABASE_SCHEMES = ("postgresql", "postgresql+asyncpg", "sqlite", "sqlite+aiosqlite")

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./freightscale.db"


class DatabaseSettings(Section):
    """The primary database, its read replicas and their connection pools.

    An empty ``url`` means the embedded SQLite default (no replicas).
    """

    url: SecretStr = SecretStr("")
    """Primary database URL (``postgresql+asyncpg://user@host/db``).
    Empty: the embedded SQLite database ``./freightscale.db``."""

    replica_urls: list[SecretStr] = Field(default_factory=list)
    """Read-replica URLs; plain reads are spread over the healthy ones."""

    pool_size: int = Field(default=10, ge=1, le=1000)
    """Connections kept open per engine and process."""

    max_overflow: int = Field(default=5, ge=0, le=1000)
    """Extra connections allowed beyond ``pool_size`` under load."""

    pool_timeout: float = Field(default=5.0, gt=0, le=300)
    """Seconds a request waits for a connection before getting a 503."""

    pool_recycle: float = Field(default=1800.0, ge=-1, le=86_400)
    """Seconds after which a connection is replaced (-1: never)."""

    pool_pre_ping: bool = True
    """Check a connection's health when it is checked out of the pool."""

    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    """Seconds to establish a new database connection."""

    statement_timeout_ms: int = Field(default=30_000, ge=0, le=3_600_000)
    """PostgreSQL ``statement_timeout`` set on every connection (0: none)."""

    application_name: str = Field(default="freightscale", min_length=1, max_length=63)
    """``application_name`` reported to PostgreSQL (visible in ``pg_stat_activity``)."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        check_url_scheme(value.get_secret_value(), DATABASE_SCHEMES)
        return value

    @field_validator("replica_urls")
    @classmethod
    def _check_replicas(cls, value: list[SecretStr]) -> list[SecretStr]:
        for url in value:
            check_url_scheme(url.get_secret_value(), DATABASE_SCHEMES[:2])
        return value

    @property
    def effective_url(self) -> str:
        """The primary URL, or the embedded SQLite default when none is set."""
        return self.url.get_secret_value() or DEFAULT_SQLITE_URL
