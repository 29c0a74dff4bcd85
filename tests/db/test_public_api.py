"""The public surface of ``freightscale.db``."""

from __future__ import annotations

import freightscale.db


def test_all_is_sorted_and_importable() -> None:
    names = freightscale.db.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(freightscale.db, name) is not None
