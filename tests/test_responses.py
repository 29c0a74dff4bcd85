"""FastJSONResponse: a drop-in for Starlette's JSONResponse, rendered by orjson."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from decimal import Decimal

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from freightscale.responses import FastJSONResponse, json_dumps

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@given(json_values)
def test_same_document_as_starlette(value: object) -> None:
    ours = FastJSONResponse(value)
    theirs = JSONResponse(value)
    assert json.loads(ours.body) == json.loads(theirs.body)
    assert ours.media_type == theirs.media_type == "application/json"


def test_serializes_what_stdlib_cannot() -> None:
    @dataclasses.dataclass
    class Point:
        x: int
        y: int

    ident = uuid.UUID(int=7)
    body = json.loads(
        json_dumps(
            {
                "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
                "id": ident,
                "point": Point(1, 2),
                "price": Decimal("12.50"),
                1: "int key",
            }
        )
    )
    assert body == {
        "when": "2026-01-02T03:04:05+00:00",
        "id": str(ident),
        "point": {"x": 1, "y": 2},
        "price": "12.50",
        "1": "int key",
    }


def test_unserializable_raises_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        json_dumps({"x": object()})


async def test_drop_in_under_starlette() -> None:
    async def endpoint(request: object) -> FastJSONResponse:
        return FastJSONResponse({"ok": True, "n": [1, 2]}, status_code=201, headers={"X-A": "1"})

    app = Starlette(routes=[Route("/", endpoint)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        response = await c.get("/")
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-a"] == "1"
    assert response.headers["content-length"] == str(len(b'{"ok":true,"n":[1,2]}'))
    assert response.json() == {"ok": True, "n": [1, 2]}
