"""Deliveries that fail are recorded: a retryable failure waits for its automatic re-drive, another
for an operator."""

from __future__ import annotations

import logging
from typing import Any

import httpx
from celery import Task
from sqlalchemy import select, update

from ragcore import tracing
from ragcore.clients.transport import is_retryable
from ragcore.db import Sessions, session_scope, utcnow
from ragcore.db.models import FailedDelivery
from ragcore.deliveries.policy import next_attempt, within_window
from ragcore.deliveries.status import DeliveryStatus
from ragcore.tasks.app import app_settings
from ragcore.tasks.contracts import TaskContract

log = logging.getLogger(__name__)

#: Enough of a neighbour's error body to tell why it refused, not a whole page.
_BODY_EXCERPT = 500


def describe(exc: BaseException) -> str:
    """The error as an operator needs it: for an HTTP answer its status, request and body."""
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        request = exc.request
        excerpt = response.text[:_BODY_EXCERPT]
        return f"HTTP {response.status_code} from {request.method} {request.url}: {excerpt}"
    return f"{type(exc).__name__}: {exc}"


def record(
    task: Task,
    contract: TaskContract,
    payload: dict[str, Any],
    exc: BaseException,
    sessions: Sessions = session_scope,
) -> bool:
    """Store one failed delivery, once per task id (a redelivered message must not add a second).

    Returns whether it waits for an automatic re-drive (a retryable failure).
    """
    task_id, attempts, now = task.request.id, task.request.retries + 1, utcnow()
    waits = is_retryable(exc)
    with sessions() as session:
        if (
            session.scalar(select(FailedDelivery.id).where(FailedDelivery.task_id == task_id))
            is not None
        ):
            return waits
        session.add(
            FailedDelivery(
                task_name=contract.name,
                task_id=task_id,
                payload=payload,
                error=describe(exc),
                attempts=attempts,
                status=DeliveryStatus.WAITING if waits else DeliveryStatus.FAILED,
                next_attempt_at=next_attempt(app_settings(task.app).deliveries, now, now)
                if waits
                else None,
                waiting_since=now if waits else None,
                traceparent=tracing.current_traceparent(),  # each re-drive's span links to it
            )
        )
    if waits:
        log.warning(
            "delivery %s of %s waits for a re-drive after %d attempt(s): %s",
            task_id,
            contract.name,
            attempts,
            exc,
        )
    else:
        log.error(
            "delivery %s of %s failed for good after %d attempt(s): %s",
            task_id,
            contract.name,
            attempts,
            exc,
        )
    return waits


def delivered(task: Task, delivery_id: int, sessions: Sessions = session_scope) -> None:
    """A re-drive delivered: its row is resolved (`redriven`), whichever of its re-drives it was.

    If the database cannot take it, the row comes due again and the re-driver reads the task's
    SUCCESS in the ledger instead."""
    with sessions() as session:
        session.execute(
            update(FailedDelivery)
            .where(
                FailedDelivery.id == delivery_id, FailedDelivery.status == DeliveryStatus.WAITING
            )
            .values(
                status=DeliveryStatus.REDRIVEN,
                redrive_task_id=task.request.id,
                next_attempt_at=None,
            )
            .execution_options(synchronize_session=False)
        )


def reschedule(
    task: Task, delivery_id: int, exc: BaseException, sessions: Sessions = session_scope
) -> bool:
    """A re-drive failed: its row waits again (backoff), or, refused or out of time, is failed for
    good."""
    policy, now = app_settings(task.app).deliveries, utcnow()
    with sessions() as session:
        row = session.get(FailedDelivery, delivery_id, with_for_update=True)
        if (
            row is None
            or row.status != DeliveryStatus.WAITING
            or row.redrive_task_id != task.request.id
        ):
            return is_retryable(exc)  # an operator discarded or re-drove it meanwhile
        row.attempts += 1
        row.error = describe(exc)
        since = row.waiting_since or now
        if is_retryable(exc) and within_window(policy, since, now):
            row.status, row.next_attempt_at = (
                DeliveryStatus.WAITING,
                next_attempt(policy, since, now),
            )
            return True
        row.status, row.next_attempt_at = DeliveryStatus.FAILED, None
    log.error("re-drive %s of delivery %s failed for good: %s", task.request.id, delivery_id, exc)
    return False
