"""Revoking a task for good, as Celery does any id, sent or not: recorded in the ledger first, so a
worker started later skips it too, then told to the running workers (the feed they poll, and
Celery's broadcast)."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from sqlalchemy.orm import Session

from ragcore.broker import heartbeats, revocation_feed
from ragcore.db.models import TaskRecord
from ragcore.tasks import ledger
from ragcore.tasks.states import RAN, TaskState
from ragcore.tasks.status import ledger_state

NOT_SEEN = (
    "not seen yet: no worker has received a task with this id; revoked, so whichever worker "
    "receives it discards it, now or after a restart"
)


class AlreadyFinished(Exception):
    """The task ran to its end: there is nothing to revoke."""


class CannotTerminate(Exception):
    """The task runs on a worker whose pool cannot stop a running task."""


@dataclass(frozen=True)
class Revocation:
    task_id: str
    #: Whether a running task was told to stop (terminate on a task that was running).
    terminated: bool
    status: str
    detail: str
    #: False for an id no worker has received yet (revoked before it arrives).
    seen: bool = True
    revoked: bool = True


def revoke(
    session: Session, app: Celery, client: redis.Redis, task_id: str, terminate: bool
) -> Revocation:
    """Revoke `task_id`; with `terminate`, also stop it if it is running.

    Raises AlreadyFinished, and CannotTerminate (nothing revoked) when asked to stop a task whose
    worker's pool cannot.
    """
    record = ledger.get(session, task_id)
    if record is None or record.name is None:  # no worker has received it (one may, later)
        return _revoke_unseen(session, app, client, task_id)
    if record.state in RAN:
        raise AlreadyFinished(
            f"task {task_id} already finished ({record.state}); there is nothing to revoke"
        )
    if terminate and record.state == TaskState.STARTED:
        _check_can_terminate(client, record)
    # The decision: one conditional UPDATE, atomic with the worker's start (ledger.claim_start):
    # REVOKED, it was waiting and will not run; STARTED, it runs and terminate applies.
    after = ledger.revoke(session, task_id)
    session.commit()  # durable before any worker hears of it
    if after is None:  # it ran to its end between the read and the revocation
        raise AlreadyFinished(f"task {task_id} already finished; there is nothing to revoke")
    running = after != TaskState.REVOKED
    stop = terminate and running
    revocation_feed.publish_revocation(client, task_id)
    app.control.revoke(task_id, terminate=stop, signal="SIGTERM")
    if stop:
        detail = "revoked; the running task is being terminated"
    elif running:
        detail = "revoked; the running task finishes, but will never run again"
    else:
        detail = "revoked; it will not run"
    session.refresh(record)
    return Revocation(task_id, terminated=stop, status=ledger_state(record), detail=detail)


def _revoke_unseen(session: Session, app: Celery, client: redis.Redis, task_id: str) -> Revocation:
    ledger.record_revoked_unseen(session, task_id)
    session.commit()  # durable before any worker hears of it
    revocation_feed.publish_revocation(client, task_id)
    # Nothing runs it (a worker that receives a task records it): nothing to terminate.
    app.control.revoke(task_id)
    return Revocation(
        task_id, terminated=False, status=TaskState.REVOKED, detail=NOT_SEEN, seen=False
    )


def _check_can_terminate(client: redis.Redis, record: TaskRecord) -> None:
    if not record.worker:
        return
    worker = heartbeats.worker_record(client, record.worker)
    if worker is not None and not worker.get("can_terminate", True):
        raise CannotTerminate(
            f"task {record.task_id} runs on {record.worker}, whose pool ({worker.get('pool')}) "
            "cannot terminate a running task; revoke without terminate to keep it from "
            "running again, or restart that worker"
        )
