"""The query endpoint: answer from Qdrant; the report relay sends its reports in the background."""

from __future__ import annotations

import math
import threading
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import State  # pants: no-infer-dep (with fastapi)

from api.auth import QueryKey
from api.errors import ERROR_RESPONSES, ErrorBody, Responses, UnavailableBody
from api.request_metrics import Outcome, observe_query
from api.schemas.query import LimitReached
from ragcore.db import utcnow
from ragcore.query import (
    ConversationNotFound,
    LimitExceeded,
    QueryAnswer,
    QueryRequest,
    QueryService,
    UpstreamUnavailable,
    build_service,
)

router = APIRouter(prefix="/api/v1/query", tags=["query"], responses=ERROR_RESPONSES)

_build_lock = threading.Lock()


async def get_service(request: Request) -> QueryService:
    """The process's query service, built on first use (its Qdrant client, embedder, hot cache).

    A coroutine: once built it is an attribute read, not worth a thread pool round trip per query;
    the build (a local Qdrant opens its folder) runs in the pool."""
    service: QueryService | None = getattr(request.app.state, "query_service", None)
    if service is None:
        service = await run_in_threadpool(_build_once, request.app.state)
    return service


def _build_once(state: State) -> QueryService:
    with _build_lock:
        service: QueryService | None = getattr(state, "query_service", None)
        if service is None:
            service = state.query_service = build_service(state.settings)
    return service


ServiceDep = Annotated[QueryService, Depends(get_service)]

_RESPONSES: Responses = {
    404: {
        "model": ErrorBody,
        "description": "Unknown conversation (or another user's, or archived)",
    },
    429: {
        "model": LimitReached,
        "description": "Daily limit reached; `resets_at` and Retry-After say when it resets",
    },
    503: {
        "model": UnavailableBody,
        "description": (
            "A dependency of the answer (embedding service, Qdrant, chat service, database)"
            " is unavailable"
        ),
    },
}


@router.post("/", response_model=QueryAnswer, responses=_RESPONSES)
@router.post("", response_model=QueryAnswer, include_in_schema=False)
def answer_query(body: QueryRequest, _: QueryKey, service: ServiceDep) -> Response:
    """Answer a question from the synced documents; its reports to Users follow in the
    background."""
    with observe_query() as timer:
        try:
            answer = service.answer(body)
        except LimitExceeded as exc:
            timer.outcome = Outcome.LIMITED
            retry_after = max(1, math.ceil((exc.resets_at - utcnow()).total_seconds()))
            return JSONResponse(
                status_code=status.HTTP_429_TOO_MANY_REQUESTS,
                content={
                    "detail": str(exc),
                    "daily_limit": exc.daily_limit,
                    "resets_at": exc.resets_at.isoformat(),
                },
                headers={"Retry-After": str(retry_after)},
            )
        except ConversationNotFound as exc:
            timer.outcome = Outcome.NOT_FOUND
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except UpstreamUnavailable as exc:
            timer.outcome = Outcome.UNAVAILABLE
            # What it said is in the log (QueryService), under this request's id.
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, f"{exc.what} is unavailable; try again"
            ) from None
        timer.outcome = Outcome.CACHED if answer.cached else Outcome.ANSWERED
        # Serialized here, in the pool thread: a returned model would be validated again against
        # `response_model` (the same model) and serialized on the event loop.
        return Response(answer.model_dump_json(), media_type="application/json")
