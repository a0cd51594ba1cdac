"""A delivery goes through its neighbour's breaker; what fails is recorded, then raised."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task

from ragcore.clients.breaker import Breaker, BreakerOpen, breaker
from ragcore.db import Sessions, session_scope
from ragcore.deliveries.recording import describe, record, reschedule
from ragcore.deliveries.redriver import REDRIVE_HEADER, release_waiting
from ragcore.settings import get_settings
from ragcore.tasks.app import PermanentTaskError, will_retry
from ragcore.tasks.contracts import TaskContract

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    gate = gate or (breaker(contract.neighbour, get_settings()) if contract.neighbour else None)
    # Celery hands custom message headers to the task as request attributes.
    redrive: int | None = getattr(task.request, REDRIVE_HEADER, None)
    try:
        if gate is None:
            return send()
        result, closed_it = gate.call(send, task.request.id)
        if closed_it:
            log.info("%s answers again: releasing its waiting deliveries", gate.neighbour)
            release_waiting(gate.neighbour, sessions)
        return result
    except Exception as exc:
        if redrive is not None:
            waits = reschedule(task, redrive, exc, sessions)
        elif not isinstance(exc, BreakerOpen) and will_retry(task, contract, exc):
            raise  # a quick retry; while the breaker is open they would only wait for it
        else:
            waits = record(task, contract, payload, exc, sessions)
        if waits:
            raise DeliveryDeferred(f"{describe(exc)} (waits for an automatic re-drive)") from exc
        if redrive is not None:  # its row is final: no quick retries for a re-drive
            raise PermanentTaskError(describe(exc)) from exc
        raise
