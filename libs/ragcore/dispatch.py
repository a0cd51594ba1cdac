"""Sending tasks by name through their contracts — the only way the API and Beat start work."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery

from ragcore import ledger
from ragcore.contracts import TaskContract
from ragcore.db import session_scope


def send(app: Celery, contract: TaskContract, kwargs: dict[str, Any] | None = None, **options: Any) -> str:
    """Validate the arguments, record the task in the ledger, publish it; return its id."""
    payload = contract.validate(kwargs)
    task_id = options.pop("task_id", None) or str(uuid.uuid4())
    with session_scope() as session:
        ledger.record_sent(session, task_id, contract, payload)
    app.send_task(contract.name, kwargs=payload, queue=contract.queue.value, task_id=task_id, **options)
    return task_id

