"""Deliveries that will not be retried again are recorded, so an operator can list and re-drive them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from celery import Task
from ragcore.tasks.app import will_retry
from ragcore.tasks.contracts import TaskContract
from ragcore.db import Sessions, session_scope
from ragcore.db.models import FailedDelivery
from sqlalchemy import select

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Enough of a neighbour's error body to tell why it refused, not a whole page.
_BODY_EXCERPT = 500


def describe(exc: BaseException) -> str:
    """The error as an operator needs it: for an HTTP answer its status, request and body."""
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        return f"HTTP {response.status_code} from {exc.request.method} {exc.request.url}: {response.text[:_BODY_EXCERPT]}"
    return f"{type(exc).__name__}: {exc}"


def record(
    task: Task, contract: TaskContract, payload: dict[str, Any], exc: BaseException, sessions: Sessions = session_scope
) -> None:
    """Store one failed delivery, once per task id (a redelivered message must not add a second)."""
    task_id = task.request.id
    with sessions() as session:
        if session.scalar(select(FailedDelivery.id).where(FailedDelivery.task_id == task_id)) is not None:
            return
        session.add(
            FailedDelivery(
                task_name=contract.name, task_id=task_id, payload=payload, error=describe(exc), attempts=task.request.retries + 1
            )
        )
    log.error("delivery %s of %s failed for good after %d attempt(s): %s", task_id, contract.name, task.request.retries + 1, exc)


def deliver(
    task: Task, contract: TaskContract, payload: dict[str, Any], send: Callable[[], T], sessions: Sessions = session_scope
) -> T:
    """Run `send`; if it fails and `define_task` will not retry it, record the failure, then re-raise.

    `payload` is what a re-drive sends: the task's arguments with every idempotency input pinned.
    """
    try:
        return send()
    except Exception as exc:
        if not will_retry(task, contract, exc):
            record(task, contract, payload, exc, sessions)
        raise
