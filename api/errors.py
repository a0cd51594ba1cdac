"""Errors as a stable JSON body: `{"detail": <message>}`, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from ragcore.tasks.dispatch import PublishFailed
from ragcore.logs import request_id_var

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    detail: str


class FieldError(BaseModel):
    field: str
    message: str


class ValidationErrorBody(BaseModel):
    detail: str
    errors: list[FieldError] = []


Responses = dict[int | str, dict[str, Any]]
#: Every authenticated route may answer these; documented so clients and schema-driven tests know them.
ERROR_RESPONSES: Responses = {
    400: {"model": ErrorBody, "description": "The body is not parseable JSON"},
    401: {"model": ErrorBody, "description": "Missing or unknown X-API-Key"},
    403: {"model": ErrorBody, "description": "The key's scope does not allow this"},
    422: {"model": ValidationErrorBody, "description": "Invalid request"},
}


#: What a route that needs the broker answers (503) while it is down.
BROKER_UNREACHABLE = "the broker (Redis) is unreachable; try again"
#: Routes that use the broker answer this while it is down (a task they would send is not recorded).
BROKER_DOWN: Responses = {503: {"model": ErrorBody, "description": "The broker (Redis) is unreachable"}}
#: Routes that answer "stored" answer this when the database did not confirm the COMMIT.
NOT_STORED_RESPONSE: Responses = {503: {"model": ErrorBody, "description": "The database did not confirm the write; nothing was stored"}}


def _location(loc: tuple[object, ...]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"field": _location(e["loc"]), "message": e["msg"]} for e in exc.errors()]
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse(status_code=422, content={"detail": f"invalid request: {message}", "errors": errors})


async def _invalid_arguments(_: Request, exc: ValidationError) -> JSONResponse:
    # Task arguments are validated again against their contract when a task is sent.
    errors = [{"field": _location(e["loc"]), "message": e["msg"]} for e in exc.errors()]
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse(status_code=422, content={"detail": f"invalid task arguments: {message}", "errors": errors})


async def _publish_failed(_: Request, exc: PublishFailed) -> JSONResponse:
    log.warning("%s", exc)
    return JSONResponse(status_code=503, content={"detail": BROKER_UNREACHABLE})


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    # The request-id middleware has already exited here: its id travels on request.state.
    request_id = getattr(request.state, "request_id", None) or request_id_var.get()
    return JSONResponse(status_code=500, content={"detail": "internal error", "request_id": request_id})


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ValidationError, _invalid_arguments)  # type: ignore[arg-type]
    app.add_exception_handler(PublishFailed, _publish_failed)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)
