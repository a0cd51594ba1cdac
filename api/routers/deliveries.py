"""Failed and waiting deliveries to neighbours: list, re-drive or discard them, one or by filter
(admin key). The work is `ragcore.deliveries.admin`'s."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, status

from api.auth import AdminKey
from api.deps import CeleryDep, SessionDep, commit
from api.errors import ERROR_RESPONSES, NOT_STORED_RESPONSE, ErrorBody, Responses, UnavailableBody
from api.schemas.deliveries import (
    BulkResult,
    DeliveryFilter,
    FailedDeliveries,
    FailedDeliveryOut,
    Redriven,
)
from ragcore import deliveries
from ragcore.deliveries import DeliveryStatus

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/deliveries", tags=["deliveries"], responses=ERROR_RESPONSES)

_RETRY_RESPONSES: Responses = {
    404: {"model": ErrorBody, "description": "No failed delivery with this id"},
    409: {"model": ErrorBody, "description": "Already re-driven"},
    503: {
        "model": UnavailableBody,
        "description": "The broker (Redis) is unreachable; nothing was marked",
    },
}


#: Ids are PostgreSQL bigints: a larger number is a 422, not a database error.
_MAX_ID = 2**63 - 1
DeliveryId = Annotated[int, Path(ge=1, le=_MAX_ID)]


@router.get("/failed")
def list_failed(
    _: AdminKey,
    session: SessionDep,
    state: Literal["failed", "waiting", "redriven", "discarded", "all"] = Query(
        "failed", alias="status"
    ),
    limit: int = Query(100, ge=1, le=500),
    offset: int = Query(0, ge=0, le=_MAX_ID),
) -> FailedDeliveries:
    """Deliveries refused (4xx) or out of re-drive time (`failed`), or waiting for their automatic
    re-drive, newest first."""
    rows, total = deliveries.page(
        session, None if state == "all" else DeliveryStatus(state), limit, offset
    )
    return FailedDeliveries(
        deliveries=[FailedDeliveryOut.model_validate(r) for r in rows], total=total
    )


@router.post(
    "/{delivery_id}/retry", status_code=status.HTTP_202_ACCEPTED, responses=_RETRY_RESPONSES
)
def retry(delivery_id: DeliveryId, _: AdminKey, session: SessionDep, celery: CeleryDep) -> Redriven:
    """Send the delivery's task again with its recorded payload (same idempotency key); it waits
    for that re-drive's outcome, and is `redriven` once it delivers."""
    # Broker down: PublishFailed rises to the one broker handler (a 503 naming the broker and the
    # request id; what Redis said is logged only), nothing was marked, the operator can retry.
    try:
        row = deliveries.redrive_one(session, celery, delivery_id)
    except deliveries.DeliveryNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except deliveries.NotRedrivable as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    # before the 202; if it fails, a second re-drive sends under the same idempotency key
    commit(session)
    return Redriven.model_validate(row)


@router.post("/redrive", responses=NOT_STORED_RESPONSE)
def redrive_matching(body: DeliveryFilter, _: AdminKey, session: SessionDep) -> BulkResult:
    """Re-drive every matching delivery: they wait, due now, and Beat sends each once (the breaker
    permitting).

    Each starts a new re-drive window, so a delivery that had run out of time is tried again too.
    """
    matched = deliveries.redrive_matching(session, body.criteria())
    commit(session)  # the count answered is what is stored
    return BulkResult(matched=matched)


@router.post("/discard", responses=NOT_STORED_RESPONSE)
def discard_matching(body: DeliveryFilter, _: AdminKey, session: SessionDep) -> BulkResult:
    """Discard every matching delivery: never sent, kept for the record as `discarded`."""
    matched = deliveries.discard_matching(session, body.criteria())
    commit(session)
    return BulkResult(matched=matched)
