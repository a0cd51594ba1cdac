"""Dead letters (admin key): the poison messages workers took off their queues, to read and
discard."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status

from api.auth import AdminKey
from api.deps import SessionDep, commit
from api.errors import ERROR_RESPONSES, NOT_STORED_RESPONSE, ErrorBody, Responses
from api.schemas.deadletters import DeadLetterOut, DeadLetterPage
from ragcore import deadletters
from ragcore.deadletters import Reason
from ragcore.tasks.contracts import Queue

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/deadletters", tags=["deadletters"], responses=ERROR_RESPONSES)

#: Ids are PostgreSQL bigints: a larger number is a 422, not a database error.
_MAX_ID = 2**63 - 1
DeadLetterId = Annotated[int, Path(ge=1, le=_MAX_ID)]
_NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "No dead letter with this id"}}


@router.get("")
def list_dead_letters(
    _: AdminKey,
    session: SessionDep,
    limit: int = Query(50, ge=1, le=500),
    cursor: int | None = Query(None, ge=1, le=_MAX_ID, description="`next_cursor` of a page"),
    queue: Queue | None = None,
    reason: Reason | None = None,
) -> DeadLetterPage:
    """Dead letters, newest first."""
    rows, next_cursor = deadletters.page(
        session, limit, before=cursor, queue=queue.value if queue else None, reason=reason
    )
    return DeadLetterPage(dead_letters=[DeadLetterOut.of(r) for r in rows], next_cursor=next_cursor)


@router.get("/{dead_letter_id}", responses=_NOT_FOUND)
def get_dead_letter(
    dead_letter_id: DeadLetterId, _: AdminKey, session: SessionDep
) -> DeadLetterOut:
    """One dead letter."""
    row = deadletters.get(session, dead_letter_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dead letter with id {dead_letter_id}")
    return DeadLetterOut.of(row)


@router.delete(
    "/{dead_letter_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**_NOT_FOUND, **NOT_STORED_RESPONSE},
)
def discard_dead_letter(dead_letter_id: DeadLetterId, _: AdminKey, session: SessionDep) -> Response:
    """Discard one dead letter (the same message coming again is a new one)."""
    if not deadletters.discard(session, dead_letter_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dead letter with id {dead_letter_id}")
    commit(session)
    log.info("dead letter %d discarded", dead_letter_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
