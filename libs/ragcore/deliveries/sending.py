"""A delivery goes through its neighbour's breaker; what fails is recorded, then raised."""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task

from ragcore.clients.breaker import Breaker, BreakerOpen, breaker
from ragcore.db import Sessions, session_scope
from ragcore.db.outage import DATABASE_ERRORS
from ragcore.deliveries.recording import delivered, describe, record, reschedule
from ragcore.deliveries.redriver import REDRIVE_HEADER, release_waiting
from ragcore.tasks.app import PermanentTaskError, app_settings, will_retry
from ragcore.tasks.contracts import TaskContract

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A failure that cannot be recorded (the database is down) is tried again after about this long.
RECORD_RETRY_SECONDS = 10.0


class DeliveryDeferred(Exception):
    """The delivery failed on a retryable error and waits in failed_deliveries for its re-drive."""


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
    error, or held back by the open breaker, waits for `ragcore.deliveries.redriver` and raises
    DeliveryDeferred.
    `payload` is what a re-drive sends: the task's arguments with every idempotency input pinned.
    """
    gate = gate or (
        breaker(contract.neighbour, app_settings(task.app)) if contract.neighbour else None
    )
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
    if redrive is not None:
        try:
            delivered(task, redrive, sessions)
        except DATABASE_ERRORS as exc:  # the row comes due again; the ledger's SUCCESS resolves it
            log.warning("could not mark delivery %s delivered: %s", redrive, exc)
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
