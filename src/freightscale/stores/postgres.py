"""PostgreSQL store: one SQLAlchemy Core table, atomic upserts, batched expiry sweep.

Rows live in one table (``freightscale_store`` by default)::

    key         text COLLATE "C" PRIMARY KEY   "<namespace>:<key>"
    value       bytea NOT NULL
    expires_at  timestamptz NULL               indexed; NULL = never expires

Every write is a single ``INSERT … ON CONFLICT (key) DO UPDATE`` and ``incr``
adds on the server with ``RETURNING``, so concurrent app instances never
race. Expiry times come from the server's clock (``now()``), so instances
with skewed clocks agree. Expired rows are invisible at once and deleted in
small ``FOR UPDATE SKIP LOCKED`` batches by :meth:`PostgresStore.sweep_expired`,
which a background task started on first use calls every ``sweep_interval``.

Every driver error passes through :func:`_translate` (the one choke point)
and comes out as :class:`~freightscale.exceptions.StoreError` or
:class:`~freightscale.exceptions.StoreUnavailableError`, chained with ``from``.

This module is the public facade; the code lives in private modules:

* ``_postgres_store``: :class:`PostgresStore` (construction, views, the Store protocol);
* ``_postgres_core``: its base class (connections, the expiry sweep, ``aclose``);
* ``_postgres_sql``: the table, its statements and the state views share;
* ``_postgres_driver``: the engine from a URL, range checks, :func:`_translate`.
"""

from __future__ import annotations

from freightscale.stores._postgres_store import PostgresStore

__all__ = ["PostgresStore"]
