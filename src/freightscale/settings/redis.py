"""Settings of the shared Redis client."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from freightscale.settings._base import Section, check_url_scheme

__all__ = ["REDIS_SCHEMES", "RedisSettings"]

REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel", "redis+cluster")


class RedisSettings(Section):
    """How to reach Redis (single node, Sentinel or Cluster).

    An empty ``url`` means no Redis: every component uses its in-process
    memory store (fine for one process, not for several instances).
    """

    url: SecretStr = SecretStr("")
    """Redis URL: ``redis://host:6379/0``, ``rediss://…`` (TLS),
    ``redis+sentinel://h1:26379,h2:26379/mymaster`` or
    ``redis+cluster://h1:7000,h2:7001``. Empty: in-process memory stores."""

    max_connections: int = Field(default=64, ge=1, le=10_000)
    """Most connections one process opens (per node for a cluster). Requests
    beyond it wait up to ``pool_timeout`` for a free connection."""

    pool_timeout: float = Field(default=2.0, gt=0, le=60)
    """Seconds a request waits for a free pooled connection before failing."""

    connect_timeout: float = Field(default=2.0, gt=0, le=60)
    """Seconds to establish a TCP (and TLS) connection."""

    socket_timeout: float = Field(default=2.0, gt=0, le=60)
    """Seconds to wait for a reply to one command."""

    retries: int = Field(default=2, ge=0, le=10)
    """Retries, with exponential backoff, of a command that failed on a connection error."""

    health_check_interval: float = Field(default=15.0, ge=0, le=3600)
    """Seconds after which an idle pooled connection is PINGed before reuse (0: never)."""

    key_prefix: str = Field(
        default="fs", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$"
    )
    """Prefix of every key freightscale writes, so it can share a Redis with other apps."""

    client_name: str = Field(default="freightscale", max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$")
    """``CLIENT SETNAME`` of every connection, so operators can find them in ``CLIENT LIST``."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        check_url_scheme(value.get_secret_value(), REDIS_SCHEMES)
        return value

    @property
    def enabled(self) -> bool:
        """True when a Redis URL is configured."""
        return bool(self.url.get_secret_value())
