"""Revocations in the ledger: the durable record every worker reads when it starts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from ragcore.db import utcnow
from ragcore.db.models import TaskRecord
from ragcore.tasks.ledger.records import insert_new
from ragcore.tasks.states import RAN, WAITING, TaskState

#: Celery keeps this many revoked ids in a worker's memory; a starting worker loads as many.
MAX_REVOKED_IDS = 50_000


def revoke(session: Session, task_id: str) -> TaskState | None:
    """Revoke a recorded task by one conditional UPDATE, atomic with its worker's start
    (`ledger.claim_start`): the state it leaves is the answer. REVOKED: it was waiting, and it will
    not run; STARTED: it was running (terminate applies); None: it already ran to its end, or no
    row.
    """
    now = utcnow()
    waiting = TaskRecord.state.in_(list(WAITING))
    after = session.execute(
        update(TaskRecord)
        .where(TaskRecord.task_id == task_id, TaskRecord.state.not_in(list(RAN)))
        .values(
            revoked=True,
            state=case((waiting, TaskState.REVOKED.value), else_=TaskRecord.state),
            finished_at=case((waiting, now), else_=TaskRecord.finished_at),
        )
        .returning(TaskRecord.state)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    return TaskState(after) if after is not None else None


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
