"""Deliveries that fail are recorded: a retryable failure waits for its automatic re-drive, another
for an operator."""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from celery import Task
from sqlalchemy import select

from ragcore.clients.breaker import Breaker, BreakerOpen, breaker
from ragcore.clients.transport import is_retryable
from ragcore.db import Sessions, session_scope, utcnow
from ragcore.db.models import FailedDelivery
from ragcore.db.outage import DATABASE_ERRORS
from ragcore.settings import get_settings
from ragcore.tasks.app import PermanentTaskError, will_retry
from ragcore.tasks.contracts import TaskContract
from ragcore.tasks.redrive import (
    FAILED,
    REDRIVE_HEADER,
    REDRIVEN,
    WAITING,
    next_attempt,
    release_waiting,
    within_window,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Enough of a neighbour's error body to tell why it refused, not a whole page.
_BODY_EXCERPT = 500
#: A failure that cannot be recorded (the database is down) is tried again after about this long.
RECORD_RETRY_SECONDS = 10.0


class DeliveryDeferred(Exception):
    """The delivery failed on a retryable error and waits in failed_deliveries for its re-drive."""


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
                status=WAITING if waits else FAILED,
                next_attempt_at=next_attempt(get_settings(), now, now) if waits else None,
                waiting_since=now if waits else None,
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


def reschedule(
    task: Task, delivery_id: int, exc: BaseException, sessions: Sessions = session_scope
) -> bool:
    """A re-drive failed: its row waits again (backoff), or, refused or out of time, is failed for
    good."""
    settings, now = get_settings(), utcnow()
    with sessions() as session:
        row = session.get(FailedDelivery, delivery_id, with_for_update=True)
        if row is None or row.status != REDRIVEN or row.redrive_task_id != task.request.id:
            return is_retryable(exc)  # an operator discarded or re-drove it meanwhile
        row.attempts += 1
        row.error = describe(exc)
        since = row.waiting_since or now
        if is_retryable(exc) and within_window(settings, since, now):
            row.status, row.next_attempt_at = WAITING, next_attempt(settings, since, now)
            return True
        row.status, row.next_attempt_at = FAILED, None
    log.error("re-drive %s of delivery %s failed for good: %s", task.request.id, delivery_id, exc)
    return False


def deliver(
    task: Task,
    contract: TaskContract,
    payload: dict[str, Any],
    send: Callable[[], T],
    sessions: Sessions = session_scope,
    gate: Breaker | None = None,
) -> T:
    """Run `send` through the neighbour's breaker; record what fails for good or waits, then raise.

    The contract's quick retries come first (`define_task`); a delivery still failing on a retryable
    error, or held back by the open breaker, waits for `ragcore.tasks.redrive` and raises
    DeliveryDeferred.
    `payload` is what a re-drive sends: the task's arguments with every idempotency input pinned.
    """
    gate = gate or (breaker(contract.neighbour, get_settings()) if contract.neighbour else None)
    # Celery hands custom message headers to the task as request attributes.
    redrive: int | None = getattr(task.request, REDRIVE_HEADER, None)
    try:
        if gate is None:
            return send()
        result, closed_it = gate.call(send, task.request.id)
    except Exception as exc:
        if redrive is None and not isinstance(exc, BreakerOpen) and will_retry(task, contract, exc):
            raise  # a quick retry; while the breaker is open they would only wait for it
        waits = _record_or_retry(task, contract, payload, exc, redrive, sessions)
        if waits:
            raise DeliveryDeferred(f"{describe(exc)} (waits for an automatic re-drive)") from exc
        if redrive is not None:  # its row is final: no quick retries for a re-drive
            raise PermanentTaskError(describe(exc)) from exc
        raise
    if closed_it:
        log.info("%s answers again: releasing its waiting deliveries", gate.neighbour)
        try:
            release_waiting(gate.neighbour, sessions)
        except DATABASE_ERRORS as exc:  # they go out at their own next attempt instead
            log.warning("could not release the waiting deliveries of %s: %s", gate.neighbour, exc)
    return result


def _record_or_retry(
    task: Task,
    contract: TaskContract,
    payload: dict[str, Any],
    exc: BaseException,
    redrive: int | None,
    sessions: Sessions,
) -> bool:
    """Record the failure (whether it waits); if the database cannot take it, the delivery stays in
    the broker: retried later (a new message, then this one is acknowledged), never dropped."""
    try:
        if redrive is not None:
            return reschedule(task, redrive, exc, sessions)
        return record(task, contract, payload, exc, sessions)
    except DATABASE_ERRORS as db_error:
        countdown = RECORD_RETRY_SECONDS * (0.5 + random.random())
        log.warning(
            "delivery %s of %s failed (%s) and the database cannot record it (%s): "
            "tried again in %.0fs",
            task.request.id,
            contract.name,
            describe(exc),
            type(db_error).__name__,
            countdown,
        )
        # Celery reads max_retries=None as "the task's own limit": unbounded is a number it never
        # reaches.
        raise task.retry(exc=exc, countdown=countdown, max_retries=sys.maxsize) from exc
