"""The public surface: sorted ``__all__`` lists whose names all resolve."""

from __future__ import annotations

import importlib

import pytest

import freightscale

MODULES = [
    "freightscale",
    "freightscale.auth",
    "freightscale.caching",
    "freightscale.compression",
    "freightscale.context",
    "freightscale.db",
    "freightscale.decompression",
    "freightscale.errors",
    "freightscale.exceptions",
    "freightscale.health",
    "freightscale.responses",
    "freightscale.routing",
    "freightscale.sessions",
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


def test_import_is_lazy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, freightscale; "
        "heavy = [m for m in ('sqlalchemy', 'freightscale.db', 'freightscale.caching', "
        "'freightscale.sessions', 'redis') if m in sys.modules]; "
        "print(','.join(heavy)); "
        "freightscale.Database; "
        "print('sqlalchemy' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[0] == ""  # nothing heavy is imported by `import freightscale`
    assert out[1] == "True"  # ...until a name that needs it is used


def test_dir_lists_lazy_exports() -> None:
    assert set(freightscale.__all__) <= set(dir(freightscale))
