"""Each request's id (X-Request-ID, in every log line it causes), its access line and its count by
status class."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.datastructures import MutableHeaders  # pants: no-infer-dep (with fastapi)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import request_metrics
from ragcore.logs import request_id_var

access_log = logging.getLogger("ragcore.access")


class RequestId:
    """Pure ASGI (Starlette's `BaseHTTPMiddleware` runs the app in a task of its own with a memory
    stream between them, which cost more CPU than the rest of the framework per query)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = (
            next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
            or uuid.uuid4().hex
        )
        # The catch-all error handler runs after this has exited: the id travels on request.state.
        scope.setdefault("state", {})["request_id"] = rid
        status = 500  # what the generic handler answers, outside this, if the app raises
        started = time.perf_counter()

        async def with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        token = request_id_var.set(rid)
        try:
            await self.app(scope, receive, with_id)
            # One access line per request, inside the request's context (uvicorn's own is off).
            access_log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
        finally:
            request_metrics.count_response(status)
            request_id_var.reset(token)
