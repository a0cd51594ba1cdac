"""Request bodies bounded while they stream in, so no caller (keyed or not) can grow the API's
memory."""

from __future__ import annotations

import json

from starlette.types import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
)


class BodyLimit:
    """Pure ASGI: refuses with 413 from `Content-Length` before reading, else once the bytes counted
    pass the route's limit. Starlette has no body limit of its own, and uvicorn's are per-connection
    buffers, not per-route sizes."""

    def __init__(self, app: ASGIApp, default: int, limits: dict[str, int]) -> None:
        self.app = app
        self.default = default
        # Longest prefix first: the first match is the most specific.
        self.limits = sorted(limits.items(), key=lambda item: len(item[0]), reverse=True)

    def limit_for(self, path: str) -> int:
        return next(
            (limit for prefix, limit in self.limits if path.startswith(prefix)), self.default
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        received = 0
        started = refused = False

        async def counted() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # The app sees the client leave; nothing more is read, and what it answers is
                    # dropped.
                    refused = True
                    if not started:
                        await _too_large(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = True
            await send(message)

        await self.app(scope, counted, guarded)


async def _too_large(send: Send, limit: int) -> None:
    await refuse(send, 413, f"request body larger than this route's limit of {limit} bytes")


async def refuse(send: Send, status: int, detail: str) -> None:
    """Answer `{"detail": ...}` and close: the body was not (all) read, so the connection cannot
    carry another request."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
