"""X-API-Key authentication with scopes, compared in constant time."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, HTTPException, Security, status
from fastapi.security import APIKeyHeader

from api.deps import SettingsDep
from ragcore.settings import ApiScope

Scope = ApiScope

_header = APIKeyHeader(name="X-API-Key", auto_error=False)
#: What a caller hears without a key, or with one no entry admits (api.key_gate says it too).
MISSING_KEY = "missing X-API-Key header"
UNKNOWN_KEY = "unknown API key"


def scope_of(key: str, configured: Mapping[str, ApiScope]) -> ApiScope | None:
    """The scope of `key`, or None. A "sha256:<hex digest>" entry admits only the key it hashes,
    never its own text: whoever reads the stored entry (a Secret, a log line) must not hold the
    scope."""
    digest = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    found: ApiScope | None = None
    for candidate, scope in configured.items():
        # Compare against every key so timing does not tell which (or whether one) matched.
        expected = digest if candidate.startswith("sha256:") else key
        if secrets.compare_digest(candidate.encode(), expected.encode()):
            found = scope
    return found


def require(*allowed: Scope):  # type: ignore[no-untyped-def]
    """A dependency admitting keys whose scope is one of `allowed` (admin is always admitted)."""

    def check(settings: SettingsDep, key: Annotated[str | None, Security(_header)]) -> str:
        if not key:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, MISSING_KEY)
        scope = scope_of(key, settings.api.keys)
        if scope is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, UNKNOWN_KEY)
        if scope != "admin" and scope not in allowed:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"this key's scope {scope!r} does not allow this"
            )
        return scope

    return check


AdminKey = Annotated[str, Depends(require("admin"))]
QueryKey = Annotated[str, Depends(require("query"))]
SyncKey = Annotated[str, Depends(require("sync"))]
