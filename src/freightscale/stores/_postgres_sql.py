"""The PostgreSQL store's table, its SQL and the state its views share.

Private to :mod:`freightscale.stores.postgres`; see that module for the schema.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Interval,
    LargeBinary,
    MetaData,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _make_table(name: str) -> Table:
    table = Table(
        name,
        MetaData(),
        # "C" collation: byte-wise order, so the primary key index also serves
        # the ``LIKE 'ns:%'`` of delete_all.
        Column("key", Text(collation="C"), primary_key=True),
        Column("value", LargeBinary, nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=True),
    )
    Index(f"{name}_expires_at_idx", table.c.expires_at)
    return table


class _Statements:
    """The store's SQL, built once per table and cached compiled by SQLAlchemy."""

    def __init__(self, t: Table) -> None:
        key = bindparam("key", type_=Text)
        live = or_(t.c.expires_at.is_(None), t.c.expires_at > func.now())
        expired = and_(t.c.expires_at.is_not(None), t.c.expires_at <= func.now())
        self.get = select(t.c.value).where(t.c.key == key, live)
        self.exists = select(t.c.key).where(t.c.key == key, live)
        self.ttl = select(func.extract("epoch", t.c.expires_at - func.now())).where(
            t.c.key == key, live
        )
        self.delete = delete(t).where(t.c.key == key).returning(live)
        upsert = pg_insert(t).values(
            key=key,
            value=bindparam("value", type_=LargeBinary),
            # now() + NULL is NULL: no ttl, no expiry.
            expires_at=func.now() + bindparam("ttl", type_=Interval),
        )
        self.set = upsert.on_conflict_do_update(
            index_elements=[t.c.key],
            set_={"value": upsert.excluded.value, "expires_at": upsert.excluded.expires_at},
        )
        utf8: ColumnElement[str] = literal_column("'UTF8'")
        added = cast(func.convert_from(t.c.value, utf8), BigInteger) + bindparam(
            "amount", type_=BigInteger
        )
        # An expired row restarts the counter (and its window) as if absent;
        # a live row keeps the expiry it was created with.
        self.incr = upsert.on_conflict_do_update(
            index_elements=[t.c.key],
            set_={
                "value": case(
                    (expired, upsert.excluded.value),
                    else_=func.convert_to(cast(added, Text), utf8),
                ),
                "expires_at": case((expired, upsert.excluded.expires_at), else_=t.c.expires_at),
            },
        ).returning(t.c.value)
        # By ctid: the planner then fetches the locked rows directly (Tid Scan)
        # instead of joining them back to the table. The name is a checked
        # identifier, so formatting it into the SQL is safe.
        self.sweep = text(
            f'DELETE FROM "{t.name}" WHERE ctid = ANY(ARRAY('  # noqa: S608
            f'SELECT ctid FROM "{t.name}" WHERE expires_at < now() '
            "LIMIT :batch FOR UPDATE SKIP LOCKED))"
        ).bindparams(bindparam("batch", type_=BigInteger))
        self.delete_everything = delete(t)
        self.delete_prefix = delete(t).where(t.c.key.like(bindparam("pattern"), escape="/"))


@dataclass(eq=False)
class _Shared:
    """State shared by a root store and all its namespace views."""

    engine: AsyncEngine
    table: Table
    sql: _Statements
    owns_engine: bool
    auto_create: bool
    sweep_batch_size: int
    sweep_interval: float | None
    statement_timeout_ms: int | None
    check_timeout: float
    schema_ready: bool = False
    schema_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sweeper: asyncio.Task[None] | None = None
    closed: bool = False
