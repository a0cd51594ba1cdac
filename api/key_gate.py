"""The key checked before the body: a keyless or unknown-key request to `/api/` is refused from its
headers alone, and the bodies of authorized callers that are larger than the default limit are
parsed a few at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send  # pants: no-infer-dep (with fastapi)

from api.auth import MISSING_KEY, UNKNOWN_KEY, scope_of
from api.body_limit import refuse
from ragcore.settings import ApiScope

#: Every route under it takes a key (README's scope table); the probes and /metrics are elsewhere.
KEYED_PREFIX = "/api/"


class KeyGate:
    """Pure ASGI, inside BodyLimit: FastAPI reads and parses a body before any dependency runs, so
    `api.auth.require` alone would parse every keyless body first. This refuses those before a
    byte of the body is read; the scope is still checked by the route's dependency.

    An authorized body larger than `large_bytes` (declared, or of unknown length) waits for one of
    `concurrent_large` slots before the app reads it: a burst of 8 MiB event batches costs that
    many parses at once, not one per request.
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: Mapping[str, ApiScope],
        large_bytes: int,
        concurrent_large: int,
    ) -> None:
        self.app = app
        self.keys = keys
        self.large_bytes = large_bytes
        self.concurrent_large = concurrent_large
        self._slots: asyncio.Semaphore | None = None  # made in the server's event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(KEYED_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        key = headers.get(b"x-api-key", b"").decode("latin-1")
        if not key or scope_of(key, self.keys) is None:
            await refuse(send, 401, UNKNOWN_KEY if key else MISSING_KEY)
            return
        declared = headers.get(b"content-length")
        small = declared is not None and declared.isdigit() and int(declared) <= self.large_bytes
        if small or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrent_large)
        async with self._slots:
            await self.app(scope, receive, send)
