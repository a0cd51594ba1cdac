"""Revocations in the ledger: the durable record every worker reads when it starts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ragcore.db import utcnow
from ragcore.db.models import TaskRecord
from ragcore.tasks.ledger.records import insert_new
from ragcore.tasks.states import RAN, WAITING, TaskState

#: Celery keeps this many revoked ids in a worker's memory; a starting worker loads as many.
MAX_REVOKED_IDS = 50_000


def mark_revoked(record: TaskRecord) -> None:
    """Persist a revocation: a waiting task is revoked now; a running one keeps its state until it
    ends."""
    record.revoked = True
    if record.state in WAITING:
        record.state = TaskState.REVOKED
        record.finished_at = utcnow()


def record_revoked_unseen(session: Session, task_id: str) -> None:
    """Revoke an id no worker has received yet; the worker that discards it fills in name and
    queue."""
    row: dict[str, Any] = {
        "task_id": task_id,
        "name": None,
        "queue": None,
        "state": TaskState.REVOKED,
        "kwargs": {},
        "revoked": True,
        "finished_at": utcnow(),
    }
    insert_new(session, [row])


def revoked_ids(session: Session, limit: int = MAX_REVOKED_IDS) -> list[str]:
    """The most recently sent revoked tasks that may still wait in a queue (for a starting
    worker)."""
    query = (
        select(TaskRecord.task_id)
        .where(TaskRecord.revoked.is_(True), TaskRecord.state.not_in(list(RAN)))
        .order_by(TaskRecord.sent_at.desc())
        .limit(limit)
    )
    return list(session.scalars(query))
