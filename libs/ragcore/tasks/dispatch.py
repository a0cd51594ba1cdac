"""Sending tasks by name through their contracts — the only way the API and Beat start work."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery
from sqlalchemy import delete

from ragcore.db import session_scope
from ragcore.db.models import TaskRecord
from ragcore.tasks import ledger
from ragcore.tasks.contracts import TaskContract


class PublishFailed(ConnectionError):
    """The task could not be published (the broker, or the result store it subscribes to, is
    down)."""


def send(
    app: Celery, contract: TaskContract, kwargs: dict[str, Any] | None = None, **options: Any
) -> str:
    """Validate the arguments, record the task in the ledger, publish it; return its id."""
    payload = contract.validate(kwargs)
    task_id = options.pop("task_id", None) or str(uuid.uuid4())
    # Recorded first, so a worker that starts the task at once finds its row.
    with session_scope() as session:
        ledger.record_sent(session, task_id, contract, payload)
    try:
        _publish(app, contract, payload, task_id, **options)
    except PublishFailed:  # never sent: the ledger must not show it as waiting
        with session_scope() as session:
            session.execute(delete(TaskRecord).where(TaskRecord.task_id == task_id))
        raise
    return task_id


def send_again(app: Celery, contract: TaskContract, payload: dict[str, Any], task_id: str) -> None:
    """Publish a task the ledger holds already (the broker lost it): same id, same arguments, its
    contract's queue; its row is left as it is."""
    _publish(app, contract, payload, task_id, headers={ledger.RECORDED_HEADER: True})


def _publish(
    app: Celery, contract: TaskContract, payload: dict[str, Any], task_id: str, **options: Any
) -> None:
    try:
        app.send_task(
            contract.name, kwargs=payload, queue=contract.queue.value, task_id=task_id, **options
        )
    except Exception as exc:
        raise PublishFailed(
            f"could not publish {contract.name}: {type(exc).__name__}: {exc}".strip()
        ) from exc
