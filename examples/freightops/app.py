"""The app for ``uvicorn examples.freightops.app:app``, configured from the environment.

``FREIGHTSCALE_*`` variables configure the library components (database,
Redis, secrets, …) and ``FREIGHTOPS_*`` the example itself (profile, demo
seeding). With none set it is the embedded default: SQLite and in-process
memory stores. For several workers prefer the factory form, which builds
one app per worker::

    uvicorn --factory examples.freightops.application:create_app --workers 4
"""

from __future__ import annotations

from examples.freightops.application import create_app

__all__ = ["app", "create_app"]

app = create_app()
"""FreightOps built from the environment at import time."""
