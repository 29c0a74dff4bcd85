"""JWT authentication with a verification cache, revocation, RBAC and tenant context.

Quick start::

    from freightscale.auth import AuthMiddleware, AuthSettings, require_permission

    settings = AuthSettings(enabled=True, secret="…32+ bytes…", require_auth=True)
    app = AuthMiddleware(app, settings, redis=redis_client, permission_loader=load_permissions)

See ``docs/auth.md`` for the full picture.
"""

from __future__ import annotations

from freightscale.auth.cache import CachedToken, Generation, VerificationCache
from freightscale.auth.config import AuthSettings
from freightscale.auth.events import EventBus, MemoryBus, RedisBus
from freightscale.auth.guards import (
    NotAuthenticated,
    PermissionRequirement,
    auth_exception_handler,
    require_permission,
)
from freightscale.auth.issuing import TokenIssuer
from freightscale.auth.keys import JWKSKeySource, VerificationKey
from freightscale.auth.middleware import AuthMiddleware
from freightscale.auth.rbac import PermissionCache, PermissionLoader, has_permission
from freightscale.auth.revocation import RevocationList
from freightscale.auth.service import Authenticator
from freightscale.auth.tenant import TenantGuard, install_tenant_guc
from freightscale.auth.verify import InvalidToken, TokenVerifier

__all__ = [
    "AuthMiddleware",
    "AuthSettings",
    "Authenticator",
    "CachedToken",
    "EventBus",
    "Generation",
    "InvalidToken",
    "JWKSKeySource",
    "MemoryBus",
    "NotAuthenticated",
    "PermissionCache",
    "PermissionLoader",
    "PermissionRequirement",
    "RedisBus",
    "RevocationList",
    "TenantGuard",
    "TokenIssuer",
    "TokenVerifier",
    "VerificationCache",
    "VerificationKey",
    "auth_exception_handler",
    "has_permission",
    "install_tenant_guc",
    "require_permission",
]
