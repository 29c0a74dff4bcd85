"""The public surface: sorted ``__all__`` lists whose names all resolve."""

from __future__ import annotations

import importlib

import pytest

import freightscale

MODULES = [
    "freightscale",
    "freightscale.context",
    "freightscale.db",
    "freightscale.decompression",
    "freightscale.errors",
    "freightscale.exceptions",
    "freightscale.health",
    "freightscale.responses",
    "freightscale.routing",
    "freightscale.settings",
    "freightscale.stack",
    "freightscale.stores",
    "freightscale.telemetry",
    "freightscale.types",
]


def isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then CamelCase, then everything else."""
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def test_top_level_all_is_plainly_sorted() -> None:
    assert list(freightscale.__all__) == sorted(freightscale.__all__)


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_unique_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=isort_key), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    for attribute in exported:
        assert hasattr(module, attribute), f"{name}.{attribute} does not resolve"


def test_version_is_exported() -> None:
    assert isinstance(freightscale.__version__, str)
