"""Settings of the database layer."""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator

from freightscale.settings._base import Section, check_url_scheme

__all__ = ["DATABASE_SCHEMES", "DEFAULT_SQLITE_URL", "DatabaseSettings"]

DATABASE_SCHEMES = ("postgresql", "postgresql+asyncpg", "sqlite", "sqlite+aiosqlite")

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./freightscale.db"


def _check_database_url(url: str, allowed: tuple[str, ...]) -> None:
    """Reject a URL with a bad scheme, host/port or database part."""
    check_url_scheme(url, allowed)
    if not url:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        # ``str(exc)`` may echo the URL (with its password): describe it instead.
        raise ValueError(
            "is not a valid database URL (expected e.g. "
            "postgresql+asyncpg://user:password@host:5432/dbname; "
            f"the port must be a number): {type(exc).__name__}"
        ) from None
    if parsed.get_backend_name() == "postgresql" and not parsed.database:
        raise ValueError("names no database (expected postgresql+asyncpg://user@host:5432/dbname)")


class DatabaseSettings(Section):
    """The primary database, its read replicas and their connection pools.

    An empty ``url`` means the embedded SQLite default (no replicas).

    Pool sizes are per engine and per process: the worst case a server sees is
    ``instances x workers x (pool_size + max_overflow)``, which
    ``freightscale check-config`` compares with ``connection_budget`` and the
    server's ``max_connections``. The defaults (10 + 5 per process, budget 90)
    fit six processes under the 100-connection target.
    """

    enabled: bool = False
    """Open the engines and give each request a database session in ``build_stack``."""

    url: SecretStr = SecretStr("")
    """Primary database URL (``postgresql+asyncpg://user@host/db``).
    Empty: the embedded SQLite database ``./freightscale.db``."""

    replica_urls: list[SecretStr] = Field(default_factory=list, max_length=32)
    """Read-replica URLs (PostgreSQL only); plain reads are spread over the
    healthy ones, round robin."""

    pool_size: int = Field(default=10, ge=1, le=1000)
    """Connections kept open per engine and process."""

    max_overflow: int = Field(default=5, ge=0, le=1000)
    """Extra connections allowed beyond ``pool_size`` under load (closed when returned)."""

    pool_timeout: float = Field(default=5.0, gt=0, le=300)
    """Seconds a request waits for a connection before getting a 503."""

    pool_recycle: float = Field(default=1800.0, ge=-1, le=86_400)
    """Seconds after which a connection is replaced (-1: never)."""

    pool_pre_ping: bool = True
    """Check a connection's health when it is checked out of the pool, so a
    restarted server costs no failed request once it is back."""

    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    """Seconds to establish a new database connection."""

    statement_timeout_ms: int = Field(default=30_000, ge=0, le=3_600_000)
    """PostgreSQL ``statement_timeout`` set on every connection (0: none)."""

    command_timeout: float = Field(default=60.0, gt=0, le=3600)
    """Client-side limit, in seconds, on one statement's round trip: the guard
    against a server that vanished mid-query. Keep it above ``statement_timeout_ms``."""

    application_name: str = Field(default="freightscale", min_length=1, max_length=63)
    """``application_name`` reported to PostgreSQL (visible in ``pg_stat_activity``)."""

    statement_cache_size: int = Field(default=100, ge=0, le=10_000)
    """Prepared statements cached per connection (asyncpg and SQLAlchemy's
    asyncpg dialect); 0 disables the cache. Ignored under
    ``pgbouncer_transaction_mode``."""

    pgbouncer_transaction_mode: bool = False
    """Set when the URL points at PgBouncer in ``pool_mode = transaction``:
    turns the prepared-statement caches off and gives each prepared statement
    a unique name, so statements never meet a server connection that lacks them."""

    read_your_writes_window: float = Field(default=5.0, ge=0, le=3600)
    """Seconds after a request that wrote during which the same client's reads
    (keyed by user or session) go to the primary (0: only within the request)."""

    marker_timeout: float = Field(default=0.2, gt=0, le=10)
    """Seconds to wait for the read-your-writes store; on timeout or error the
    request's reads go to the primary (the safe side)."""

    max_replica_lag: float = Field(default=5.0, gt=0, le=3600)
    """A replica whose replay lag exceeds this many seconds is taken out of rotation."""

    replica_check_interval: float = Field(default=5.0, ge=0.05, le=3600)
    """Seconds between replica health and lag checks (an out-of-rotation
    replica is retried at the same pace)."""

    replica_check_timeout: float = Field(default=2.0, gt=0, le=60)
    """Seconds a replica health check may take before the replica counts as down."""

    unavailable_retry_after: int = Field(default=2, ge=1, le=3600)
    """``Retry-After`` seconds of the 503 sent on a pool timeout or a database outage."""

    connection_budget: int = Field(default=90, ge=1, le=100_000)
    """Most connections all processes together may open to one server (the
    primary and each replica are budgeted separately)."""

    instances: int = Field(default=1, ge=1, le=10_000)
    """Application instances (hosts, containers) in the deployment, for the budget check."""

    workers: int = Field(default=1, ge=1, le=1024)
    """Worker processes per instance, for the budget check."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        _check_database_url(value.get_secret_value(), DATABASE_SCHEMES)
        return value

    @field_validator("replica_urls")
    @classmethod
    def _check_replicas(cls, value: list[SecretStr]) -> list[SecretStr]:
        for url in value:
            if not url.get_secret_value():
                raise ValueError("a replica URL is empty")
            _check_database_url(url.get_secret_value(), DATABASE_SCHEMES[:2])
        return value

    @model_validator(mode="after")
    def _check_replicas_need_postgres(self) -> Self:
        if self.replica_urls and self.is_sqlite:
            raise ValueError(
                "replica_urls are only allowed with a PostgreSQL primary; set "
                "url to a postgresql+asyncpg:// URL or remove the replicas"
            )
        return self

    @property
    def effective_url(self) -> str:
        """The primary URL, or the embedded SQLite default when none is set."""
        return self.url.get_secret_value() or DEFAULT_SQLITE_URL

    @property
    def is_sqlite(self) -> bool:
        """True when the primary is SQLite (the embedded default or a sqlite URL)."""
        return self.effective_url.startswith("sqlite")

    @property
    def max_per_process(self) -> int:
        """Most connections one process opens to one server: ``pool_size + max_overflow``."""
        return self.pool_size + self.max_overflow

    @property
    def worst_case_connections(self) -> int:
        """Most connections the whole deployment opens to one server."""
        return self.instances * self.workers * self.max_per_process
