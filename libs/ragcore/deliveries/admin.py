"""What an operator asks of the failed deliveries: list them, re-drive or discard one or many, and
how many wait (for `/metrics`). The caller commits."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from celery import Celery
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from ragcore.db import rows_affected, utcnow
from ragcore.db.models import FailedDelivery
from ragcore.deliveries.policy import next_attempt
from ragcore.deliveries.redriver import Unsendable, in_flight, publish
from ragcore.deliveries.status import UNRESOLVED, DeliveryStatus
from ragcore.tasks import contracts
from ragcore.tasks.app import app_settings
from ragcore.tasks.states import UNFINISHED

log = logging.getLogger(__name__)


class DeliveryNotFound(LookupError):
    """No failed delivery has this id."""


class NotRedrivable(Exception):
    """The delivery cannot be re-driven: already re-driven or discarded, or of an unknown task."""


def backlog(session: Session, neighbour: str) -> tuple[int, datetime | None]:
    """How many deliveries to `neighbour` wait for a re-drive, and since when (a re-drive in flight
    is counted: its row waits until the re-drive delivers)."""
    count, oldest = session.execute(
        select(func.count(), func.min(FailedDelivery.waiting_since)).where(
            FailedDelivery.status == DeliveryStatus.WAITING,
            FailedDelivery.task_name.in_(contracts.deliveries_to(neighbour)),
        )
    ).one()
    return int(count), oldest


def failed_count(session: Session, neighbour: str) -> int:
    """How many deliveries to `neighbour` failed for good and wait for an operator."""
    return int(
        session.scalar(
            select(func.count()).where(
                FailedDelivery.status == DeliveryStatus.FAILED,
                FailedDelivery.task_name.in_(contracts.deliveries_to(neighbour)),
            )
        )
        or 0
    )


def page(
    session: Session, status: DeliveryStatus | None, limit: int, offset: int
) -> tuple[Sequence[FailedDelivery], int]:
    """One page of deliveries in `status` (None: any), newest first, and how many there are."""
    where = [] if status is None else [FailedDelivery.status == status]
    total = session.scalar(select(func.count()).select_from(FailedDelivery).where(*where)) or 0
    rows = session.scalars(
        select(FailedDelivery)
        .where(*where)
        .order_by(FailedDelivery.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return rows, total


def redrive_one(session: Session, app: Celery, delivery_id: int) -> FailedDelivery:
    """Send the delivery's task again with its recorded payload (same idempotency key), with a
    fresh re-drive window; its row waits for that re-drive's outcome
    (`ragcore.deliveries.redriver`).

    Raises DeliveryNotFound, NotRedrivable (resolved, of a task no contract defines, or a re-drive
    of it still on its way), pydantic's ValidationError for a payload its contract refuses, and
    dispatch.PublishFailed, each with nothing marked.
    """
    # Locked, so two operators re-driving at once send it once.
    row = session.scalar(
        select(FailedDelivery).where(FailedDelivery.id == delivery_id).with_for_update()
    )
    if row is None:
        raise DeliveryNotFound(f"no failed delivery with id {delivery_id}")
    if row.status not in UNRESOLVED:
        raise NotRedrivable(
            f"delivery {delivery_id} was already re-driven as task {row.redrive_task_id}"
            if row.status == DeliveryStatus.REDRIVEN
            else f"delivery {delivery_id} is {row.status}"
        )
    if in_flight(session, [row]).get(row.redrive_task_id or "") in UNFINISHED:
        raise NotRedrivable(
            f"delivery {delivery_id} is being re-driven as task {row.redrive_task_id}, "
            "which has not finished"
        )
    policy, now = app_settings(app).deliveries, utcnow()
    try:
        publish(app, row, policy, now, str(uuid.uuid4()))
    except Unsendable as exc:
        raise NotRedrivable(f"delivery {delivery_id} cannot be re-driven: {exc}") from None
    # an operator's re-drive starts a fresh window, as a bulk one does
    row.waiting_since, row.next_attempt_at = now, next_attempt(policy, now, now)
    return row


@dataclass(frozen=True, kw_only=True)
class DeliveryCriteria:
    """Which unresolved deliveries a bulk action takes; None matches anything."""

    statuses: Collection[DeliveryStatus] = UNRESOLVED
    task_name: str | None = None
    failed_after: datetime | None = None
    failed_before: datetime | None = None
    error_contains: str | None = None

    def where(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = [FailedDelivery.status.in_(list(self.statuses))]
        if self.task_name is not None:
            where.append(FailedDelivery.task_name == self.task_name)
        if self.failed_after is not None:
            where.append(FailedDelivery.created_at >= self.failed_after)
        if self.failed_before is not None:
            where.append(FailedDelivery.created_at < self.failed_before)
        if self.error_contains is not None:
            where.append(FailedDelivery.error.icontains(self.error_contains, autoescape=True))
        return where


def redrive_matching(session: Session, criteria: DeliveryCriteria) -> int:
    """Every matching delivery waits, due now, with a fresh re-drive window; returns how many.

    Waiting rows are what the re-driver publishes (locked, marked, once each) every round, so each
    is sent once, the breaker permitting, and one that had run out of time is tried again too.
    """
    now = utcnow()
    matched = _mark(
        session,
        criteria,
        status=DeliveryStatus.WAITING,
        next_attempt_at=now,
        waiting_since=now,
    )
    log.info("bulk re-drive of %d deliveries (%s)", matched, criteria)
    return matched


def discard_matching(session: Session, criteria: DeliveryCriteria) -> int:
    """Every matching delivery is `discarded`: never sent, kept for the record; returns how many."""
    matched = _mark(session, criteria, status=DeliveryStatus.DISCARDED, next_attempt_at=None)
    log.info("discarded %d deliveries (%s)", matched, criteria)
    return matched


def _mark(session: Session, criteria: DeliveryCriteria, **values: object) -> int:
    return rows_affected(
        session,
        update(FailedDelivery)
        .where(*criteria.where())
        .values(**values)
        .execution_options(synchronize_session=False),
    )
