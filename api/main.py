"""Entrypoint of the API image: `python -m api.main` (uvicorn on port 7001)."""

from __future__ import annotations

import argparse
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request, Response

from api import console, errors, request_metrics
from api.body_limit import BodyLimit
from api.key_gate import KeyGate
from api.routers import deadletters, deliveries, health, metrics, notifications, query, sync, tasks
from ragcore import invariants, tracing
from ragcore.broker import broker_client
from ragcore.logs import configure_logging, request_id_var
from ragcore.settings import Settings, get_settings
from ragcore.tasks.app import create_app as create_celery_app

access_log = logging.getLogger("ragcore.access")
log = logging.getLogger(__name__)


def refuse_unsafe_start(settings: Settings) -> None:
    """The API's start-up invariants (ragcore.invariants): a broken one stops the start, logged."""
    try:
        invariants.check(settings, broker_client(settings.redis), service="api", api=True)
    except invariants.InvariantError as exc:
        log.critical("%s", exc)
        raise


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        refuse_unsafe_start(settings)
        yield

    app = FastAPI(title="ragcore", version="0.1.0", debug=False, lifespan=lifespan)
    app.state.settings = settings
    app.state.celery = create_celery_app("api", settings)
    errors.install(app)
    # Inside BodyLimit (a declared oversize body is a 413 first) and before the app reads a body.
    app.add_middleware(
        KeyGate,
        keys=settings.api.keys,
        large_bytes=settings.api.max_body_bytes,
        concurrent_large=settings.api.max_concurrent_large_bodies,
    )
    # Added before the request-id middleware, so it runs inside it: a 413 carries X-Request-ID too.
    app.add_middleware(
        BodyLimit, default=settings.api.max_body_bytes, limits=settings.api.body_limits
    )

    @app.middleware("http")
    async def request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = request.headers.get("X-Request-ID") or uuid.uuid4().hex
        token = request_id_var.set(rid)
        request.state.request_id = rid
        started = time.perf_counter()
        try:
            try:
                response = await call_next(request)
            except Exception:  # the generic handler answers 500 outside this middleware
                request_metrics.count_response(500)
                raise
            request_metrics.count_response(response.status_code)
            # One access line per request, inside the request's context (uvicorn's own is off).
            access_log.info(
                "%s %s %d",
                request.method,
                request.url.path,
                response.status_code,
                extra={
                    "status": response.status_code,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
        finally:
            request_id_var.reset(token)
        response.headers["X-Request-ID"] = rid
        return response

    for router in (
        health.router,
        query.router,
        sync.router,
        tasks.router,
        deliveries.router,
        notifications.router,
        deadletters.router,
        metrics.router,
    ):
        app.include_router(router)
    console.install(app, settings)
    tracing.instrument_app(app)
    return app


def main(argv: list[str] | None = None) -> None:
    # Options first: `--help` answers without binding the port or opening Redis or the database.
    argparse.ArgumentParser(
        prog="server",
        description=(
            "The ragcore control plane: the FastAPI app on uvicorn (no options but --help)."
        ),
        epilog="Configured by RAGCORE_* environment variables, e.g. RAGCORE_API_HOST and "
        "RAGCORE_API_PORT (default 7001), RAGCORE_REDIS_URL, RAGCORE_DATABASE_URL, "
        "RAGCORE_API_KEYS.",
    ).parse_args(argv)
    settings = get_settings()
    configure_logging("api", settings.log_level)
    tracing.configure("api", settings.trace_file)
    uvicorn.run(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
