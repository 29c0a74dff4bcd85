"""SQL helpers the feature modules share: one round trip where a page needs several row sets.

A detail page with its child rows (a shipment's loads and invoices) is one
statement: each child set is a scalar subquery that aggregates its rows into
a JSON array (``json_agg`` on PostgreSQL, ``json_group_array`` on SQLite),
instead of one query per child set. On this app's hot detail route that
turns four round trips into one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import JSON

__all__ = ["json_rows"]


class json_rows(FunctionElement[Any]):
    """A JSON array with one object per aggregated row: ``json_rows(Load.id, Load.status)``.

    Use it as the only column of a scalar subquery; each object's keys are
    the columns' names. An empty set gives ``[]``.
    """

    type = JSON()
    inherit_cache = True
    name = "json_rows"


def _pairs(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    # Keys are the model's column names (identifiers), never user input.
    return ", ".join(
        f"'{column.key}', {compiler.process(column, **kw)}" for column in element.clauses
    )


@compiles(json_rows, "postgresql")
def _postgresql(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    return f"coalesce(json_agg(json_build_object({_pairs(element, compiler, **kw)})), '[]'::json)"


@compiles(json_rows, "sqlite")
def _sqlite(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_group_array(json_object({_pairs(element, compiler, **kw)}))"
