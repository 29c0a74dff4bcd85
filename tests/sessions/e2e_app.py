"""The app the two-process test serves with uvicorn (configured by environment)."""

from __future__ import annotations

import os

from pydantic import SecretStr

from freightscale.sessions import SessionMiddleware
from freightscale.settings import RedisSettings
from tests.sessions.apps import starlette_app
from tests.sessions.conftest import settings

app = SessionMiddleware(
    starlette_app(),
    settings(),
    redis_settings=RedisSettings(
        url=SecretStr(os.environ["FS_E2E_REDIS_URL"]), key_prefix=os.environ["FS_E2E_PREFIX"]
    ),
)
