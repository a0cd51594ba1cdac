"""Failed and waiting deliveries to neighbours: list, re-drive or discard them, one or by filter
(admin key)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import ColumnElement, func, select, update

from api.auth import AdminKey
from api.deps import CeleryDep, SessionDep, commit
from api.errors import ERROR_RESPONSES, NOT_STORED_RESPONSE, ErrorBody, Responses, UnavailableBody
from api.schemas.tasks import TaskName
from ragcore.db import rows_affected, utcnow
from ragcore.db.models import FailedDelivery
from ragcore.tasks import dispatch
from ragcore.tasks.contracts import BY_NAME, NO_NUL, Timestamp
from ragcore.tasks.redrive import DISCARDED, FAILED, WAITING

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
    next_attempt_at: datetime | None
    waiting_since: datetime | None


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
    state: Literal["failed", "waiting", "redriven", "discarded", "all"] = Query(
        "failed", alias="status"
    ),
    limit: int = Query(100, ge=1, le=500),
    offset: int = Query(0, ge=0, le=_MAX_ID),
) -> FailedDeliveries:
    """Deliveries refused (4xx) or out of re-drive time (`failed`), or waiting for their automatic
    re-drive, newest first."""
    where = [] if state == "all" else [FailedDelivery.status == state]
    total = session.scalar(select(func.count()).select_from(FailedDelivery).where(*where)) or 0
    rows = session.scalars(
        select(FailedDelivery)
        .where(*where)
        .order_by(FailedDelivery.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return FailedDeliveries(
        deliveries=[FailedDeliveryOut.model_validate(r, from_attributes=True) for r in rows],
        total=total,
    )


@router.post(
    "/{delivery_id}/retry", status_code=status.HTTP_202_ACCEPTED, responses=_RETRY_RESPONSES
)
def retry(delivery_id: DeliveryId, _: AdminKey, session: SessionDep, celery: CeleryDep) -> Redriven:
    """Send the delivery's task again with its recorded payload (same idempotency key); mark it
    re-driven."""
    # Locked, so two operators re-driving at once send it once.
    row = session.scalar(
        select(FailedDelivery).where(FailedDelivery.id == delivery_id).with_for_update()
    )
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no failed delivery with id {delivery_id}")
    if row.status not in (FAILED, WAITING):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"delivery {delivery_id} was already re-driven as task {row.redrive_task_id}",
        )
    task = BY_NAME.get(row.task_name)
    if task is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"delivery {delivery_id} is of task {row.task_name!r}, which no contract defines",
        )
    # a payload no contract accepts is a 422, not a publish failure
    payload = task.validate(row.payload)
    # Broker down: PublishFailed rises to the one broker handler (a 503 naming the broker and the
    # request id; what Redis said is logged only), nothing was marked, the operator can retry.
    task_id = dispatch.send(celery, task, payload)
    row.status, row.redriven_at, row.redrive_task_id = "redriven", utcnow(), task_id
    # before the 202; if it fails, a second re-drive sends under the same idempotency key
    commit(session)
    return Redriven(id=row.id, task_id=task_id, status=row.status)


#: A bulk action needs at least one of these, not null: an empty filter would take every delivery.
CRITERIA = ("task_name", "failed_after", "failed_before", "error_contains")


def _state_some_criterion(schema: dict[str, Any]) -> None:
    # The OpenAPI document states the rule that `_some_criterion` enforces.
    schema["anyOf"] = [
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in CRITERIA
    ]


class DeliveryFilter(BaseModel):
    """Which failed or waiting deliveries a bulk action takes; at least one criterion."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_state_some_criterion)

    task_name: TaskName | None = Field(None, description="Only deliveries of this task")
    failed_after: Timestamp | None = Field(None, description="First failed at or after this time")
    failed_before: Timestamp | None = Field(None, description="First failed before this time")
    # No NUL: PostgreSQL cannot compare text with it.
    error_contains: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        pattern=NO_NUL,
        description="Error text contains this (any case)",
    )
    status: Literal["failed", "waiting", "any"] = Field(
        "any", description="failed (an operator's), waiting (automatic), or both"
    )

    @field_validator("failed_after", "failed_before")
    @classmethod
    def _in_utc(cls, moment: datetime | None) -> datetime | None:
        try:
            return moment.astimezone(UTC) if moment is not None else None
        except OverflowError:
            raise ValueError("out of range once in UTC") from None

    @model_validator(mode="after")
    def _some_criterion(self) -> DeliveryFilter:
        if all(getattr(self, name) is None for name in CRITERIA):
            raise ValueError(f"give at least one of {', '.join(CRITERIA)}")
        return self

    def where(self) -> list[ColumnElement[bool]]:
        states = [FAILED, WAITING] if self.status == "any" else [self.status]
        where: list[ColumnElement[bool]] = [FailedDelivery.status.in_(states)]
        if self.task_name is not None:
            where.append(FailedDelivery.task_name == self.task_name.value)
        if self.failed_after is not None:
            where.append(FailedDelivery.created_at >= self.failed_after)
        if self.failed_before is not None:
            where.append(FailedDelivery.created_at < self.failed_before)
        if self.error_contains is not None:
            where.append(FailedDelivery.error.icontains(self.error_contains, autoescape=True))
        return where


class BulkResult(BaseModel):
    matched: int = Field(description="Deliveries the filter took")


@router.post("/redrive", responses=NOT_STORED_RESPONSE)
def redrive_matching(body: DeliveryFilter, _: AdminKey, session: SessionDep) -> BulkResult:
    """Re-drive every matching delivery: they wait, due now, and Beat sends each once (the breaker
    permitting).

    Each starts a new re-drive window, so a delivery that had run out of time is tried again too.
    """
    # Waiting rows are what the re-driver publishes (locked, marked, once each); it runs every relay
    # round.
    now = utcnow()
    matched = rows_affected(
        session,
        update(FailedDelivery)
        .where(*body.where())
        .values(status=WAITING, next_attempt_at=now, waiting_since=now)
        .execution_options(synchronize_session=False),
    )
    commit(session)  # the count answered is what is stored
    log.info("bulk re-drive of %d deliveries (%s)", matched, body.model_dump(exclude_none=True))
    return BulkResult(matched=matched)


@router.post("/discard", responses=NOT_STORED_RESPONSE)
def discard_matching(body: DeliveryFilter, _: AdminKey, session: SessionDep) -> BulkResult:
    """Discard every matching delivery: never sent, kept for the record as `discarded`."""
    matched = rows_affected(
        session,
        update(FailedDelivery)
        .where(*body.where())
        .values(status=DISCARDED, next_attempt_at=None)
        .execution_options(synchronize_session=False),
    )
    commit(session)
    log.info("discarded %d deliveries (%s)", matched, body.model_dump(exclude_none=True))
    return BulkResult(matched=matched)
