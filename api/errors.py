"""Errors as a stable JSON body: `{"detail": <message>}`, never a traceback or an upstream's
details.

A 5xx body names what failed and carries the request id; what the upstream said (its URL, body,
exception text) is logged under that request id only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kombu.exceptions import OperationalError as KombuError  # pants: no-infer-dep (with celery)
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException  # pants: no-infer-dep (comes with fastapi)

from ragcore.logs import request_id_var

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    detail: str


class UnavailableBody(BaseModel):
    #: Which dependency failed, e.g. "the embedding service is unavailable; try again".
    detail: str
    #: The X-Request-ID under which the API logged what the dependency said.
    request_id: str


class FieldError(BaseModel):
    field: str
    message: str


class ValidationErrorBody(BaseModel):
    detail: str
    errors: list[FieldError] = []


Responses = dict[int | str, dict[str, Any]]
#: Every authenticated route may answer these; documented so clients and schema-driven tests know
#: them.
ERROR_RESPONSES: Responses = {
    400: {"model": ErrorBody, "description": "The body is not parseable JSON"},
    401: {"model": ErrorBody, "description": "Missing or unknown X-API-Key"},
    403: {"model": ErrorBody, "description": "The key's scope does not allow this"},
    413: {"model": ErrorBody, "description": "The body is larger than this route's limit"},
    422: {"model": ValidationErrorBody, "description": "Invalid request"},
}


#: What a route that needs the broker answers (503) while it is down.
BROKER_UNREACHABLE = "the broker (Redis) is unreachable; try again"
DATABASE_UNAVAILABLE = "the database is unavailable; try again"
#: Routes that use the broker answer this while it is down (a task they would send is not recorded).
BROKER_DOWN: Responses = {
    503: {"model": UnavailableBody, "description": "The broker (Redis) is unreachable"}
}
#: Routes that answer "stored" answer this when the database did not confirm the COMMIT.
NOT_STORED_RESPONSE: Responses = {
    503: {
        "model": UnavailableBody,
        "description": "The database did not confirm the write; nothing was stored",
    }
}


def _location(loc: tuple[object, ...]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"field": _location(e["loc"]), "message": e["msg"]} for e in exc.errors()]
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse(
        status_code=422, content={"detail": f"invalid request: {message}", "errors": errors}
    )


async def _invalid_arguments(_: Request, exc: ValidationError) -> JSONResponse:
    # Task arguments are validated again against their contract when a task is sent.
    errors = [{"field": _location(e["loc"]), "message": e["msg"]} for e in exc.errors()]
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse(
        status_code=422, content={"detail": f"invalid task arguments: {message}", "errors": errors}
    )


def _request_id(request: Request) -> str | None:
    # For the catch-all handler the request-id middleware has already exited: the id travels on
    # request.state.
    return getattr(request.state, "request_id", None) or request_id_var.get()


def _failed(
    request: Request, status: int, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"detail": detail, "request_id": _request_id(request)},
        headers=headers,
    )


def _documented_methods(request: Request) -> str | None:
    """Every method the OpenAPI document gives this path (Starlette's 405 names the first route's
    only, so a path with a GET and a DELETE route would say `Allow: GET`); None if it has none."""
    methods = {
        method.upper()
        for template, operations in request.app.openapi()["paths"].items()
        if re.fullmatch(
            "[^/]+".join(re.escape(part) for part in re.split(r"\{[^}]+\}", template)),
            request.url.path,
        )
        for method in operations
    }
    if "GET" in methods:
        methods.add("HEAD")  # Starlette answers HEAD wherever it answers GET
    return ", ".join(sorted(methods)) or None


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 405 and (allowed := _documented_methods(request)):
        exc.headers = {**(exc.headers or {}), "Allow": allowed}
    if exc.status_code < 500:
        return await http_exception_handler(request, exc)
    return _failed(request, exc.status_code, str(exc.detail), exc.headers)


#: What reaching the broker raises while Redis is down: redis-py's errors, kombu's, and the
#: socket's own (PublishFailed is a ConnectionError). Routes leave them to this one handler.
BROKER_ERRORS: tuple[type[Exception], ...] = (
    redis.RedisError,
    KombuError,
    ConnectionError,
    TimeoutError,
)


async def _broker_unreachable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("broker unreachable: %s", exc)
    return _failed(request, 503, BROKER_UNREACHABLE)


async def _database_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return _failed(request, 503, DATABASE_UNAVAILABLE)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return _failed(request, 500, "internal error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ValidationError, _invalid_arguments)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    for broker_error in BROKER_ERRORS:
        app.add_exception_handler(broker_error, _broker_unreachable)
    app.add_exception_handler(OperationalError, _database_unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)
