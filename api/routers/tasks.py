"""Task management: status of any task sent through the contracts (SPEC §3)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from celery.result import AsyncResult
from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from api.auth import AnyKey
from api.deps import CeleryDep, SessionDep
from ragcore import ledger

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])


class TaskStatus(BaseModel):
    task_id: str
    status: str
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    name: str | None = None
    queue: str | None = None
    progress: dict[str, Any] | None = None
    sent_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str | None = None
    retries: int = 0


@router.get("/status/{task_id}", response_model=TaskStatus)
def task_status(task_id: str, scope: AnyKey, celery: CeleryDep, session: SessionDep) -> TaskStatus:
    """Live state from the result backend, completed by the ledger; 404 for ids never sent."""
    record = ledger.get(session, task_id)
    live = AsyncResult(task_id, app=celery)
    state = live.state
    if record is None and state == "PENDING":
        raise HTTPException(404, f"no task with id {task_id!r} was ever sent")
    status = TaskStatus(task_id=task_id, status=state)
    if record is not None:
        status = TaskStatus(
            task_id=task_id, status=state, name=record.name, queue=record.queue, progress=record.progress,
            sent_at=record.sent_at, started_at=record.started_at, finished_at=record.finished_at,
            worker=record.worker, retries=record.retries,
        )
        if state == "PENDING" and record.state != "PENDING":
            # The Redis result expired or was flushed: the ledger still knows the outcome.
            status.status = record.state
            status.result = record.result.get("value", record.result) if record.result and set(record.result) == {"value"} else record.result
            status.error = record.error
            status.traceback = record.traceback
    if state == "PROGRESS" and isinstance(live.info, dict):
        status.progress = live.info
    elif state == "SUCCESS":
        status.result = live.result
    elif state in ("FAILURE", "RETRY", "REVOKED"):
        status.error = f"{type(live.result).__name__}: {live.result}" if isinstance(live.result, BaseException) else str(live.result)
        status.traceback = live.traceback
    if status.name is None:
        status.name, status.queue = getattr(live, "name", None), getattr(live, "queue", None)
    if scope != "admin":
        status.traceback = None
    return status
