"""Failed deliveries to neighbours: list them and re-drive them (admin key)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel
from sqlalchemy import func, select

from api.auth import AdminKey
from api.deps import CeleryDep, SessionDep, commit
from api.errors import ERROR_RESPONSES, ErrorBody, Responses
from ragcore.tasks import dispatch
from ragcore.tasks.contracts import BY_NAME
from ragcore.db import utcnow
from ragcore.db.models import FailedDelivery

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/deliveries", tags=["deliveries"], responses=ERROR_RESPONSES)

_RETRY_RESPONSES: Responses = {
    404: {"model": ErrorBody, "description": "No failed delivery with this id"},
    409: {"model": ErrorBody, "description": "Already re-driven"},
    503: {"model": ErrorBody, "description": "The broker (Redis) is unreachable; nothing was marked"},
}


#: Ids are PostgreSQL bigints: a larger number is a 422, not a database error.
_MAX_ID = 2**63 - 1
DeliveryId = Annotated[int, Path(ge=1, le=_MAX_ID)]


class FailedDeliveryOut(BaseModel):
    id: int
    task_name: str
    task_id: str
    payload: dict[str, Any]
    error: str
    attempts: int
    status: str
    created_at: datetime
    redriven_at: datetime | None
    redrive_task_id: str | None


class FailedDeliveries(BaseModel):
    deliveries: list[FailedDeliveryOut]
    total: int


class Redriven(BaseModel):
    id: int
    task_id: str
    status: str


@router.get("/failed")
def list_failed(
    _: AdminKey,
    session: SessionDep,
    state: Literal["failed", "redriven", "all"] = Query("failed", alias="status"),
    limit: int = Query(100, ge=1, le=500),
    offset: int = Query(0, ge=0, le=_MAX_ID),
) -> FailedDeliveries:
    """Deliveries that exhausted their retries or were refused (4xx), newest first."""
    where = [] if state == "all" else [FailedDelivery.status == state]
    total = session.scalar(select(func.count()).select_from(FailedDelivery).where(*where)) or 0
    rows = session.scalars(
        select(FailedDelivery).where(*where).order_by(FailedDelivery.id.desc()).limit(limit).offset(offset)
    ).all()
    return FailedDeliveries(deliveries=[FailedDeliveryOut.model_validate(r, from_attributes=True) for r in rows], total=total)


@router.post("/{delivery_id}/retry", status_code=status.HTTP_202_ACCEPTED, responses=_RETRY_RESPONSES)
def retry(delivery_id: DeliveryId, _: AdminKey, session: SessionDep, celery: CeleryDep) -> Redriven:
    """Send the delivery's task again with its recorded payload (same idempotency key); mark it re-driven."""
    # Locked, so two operators re-driving at once send it once.
    row = session.scalar(select(FailedDelivery).where(FailedDelivery.id == delivery_id).with_for_update())
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no failed delivery with id {delivery_id}")
    if row.status != "failed":
        raise HTTPException(status.HTTP_409_CONFLICT, f"delivery {delivery_id} was already re-driven as task {row.redrive_task_id}")
    task = BY_NAME.get(row.task_name)
    if task is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"delivery {delivery_id} is of task {row.task_name!r}, which no contract defines")
    payload = task.validate(row.payload)  # a payload no contract accepts is a 422, not a publish failure
    try:
        task_id = dispatch.send(celery, task, payload)
    except Exception as exc:  # broker down: nothing was marked, the operator can retry later
        log.warning("re-drive of delivery %s failed: %s", delivery_id, exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"could not publish the task: {type(exc).__name__}: {exc}") from None
    row.status, row.redriven_at, row.redrive_task_id = "redriven", utcnow(), task_id
    commit(session)  # before the 202; if it fails, a second re-drive sends under the same idempotency key
    return Redriven(id=row.id, task_id=task_id, status=row.status)
